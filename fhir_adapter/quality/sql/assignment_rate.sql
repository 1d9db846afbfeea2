-- Share of sessions that set at least one homework item, in a period (dates inclusive, UTC).
-- Parameters: start and end (YYYY-MM-DD), bound by name. Counts are 0 for an empty period
-- (SUM over no rows is NULL), as $evaluate-measure gives; the rate is NULL there.
SELECT COUNT(*) AS sessions,
       COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM homework_tasks t WHERE t.encounter = s.encounter)
                         THEN 1 ELSE 0 END), 0) AS with_homework,
       1.0 * SUM(CASE WHEN EXISTS (SELECT 1 FROM homework_tasks t WHERE t.encounter = s.encounter)
                      THEN 1 ELSE 0 END) / NULLIF(COUNT(*), 0) AS assignment_rate
FROM homework_sessions s
WHERE substr(s.session_start, 1, 10) BETWEEN :start AND :end;
