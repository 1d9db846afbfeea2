-- Share of each therapist's sessions that set homework, in a period.
SELECT s.practitioner, s.practitioner_name,
       COUNT(*) AS sessions,
       COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM homework_tasks t WHERE t.encounter = s.encounter)
                         THEN 1 ELSE 0 END), 0) AS with_homework,
       1.0 * SUM(CASE WHEN EXISTS (SELECT 1 FROM homework_tasks t WHERE t.encounter = s.encounter)
                      THEN 1 ELSE 0 END) / NULLIF(COUNT(*), 0) AS assignment_rate
FROM homework_sessions s
WHERE substr(s.session_start, 1, 10) BETWEEN :start AND :end
GROUP BY s.practitioner, s.practitioner_name
ORDER BY s.practitioner;
