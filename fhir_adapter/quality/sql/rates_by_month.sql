-- Assignment and review rates per calendar month (UTC) in a period.
WITH sessions AS (
    SELECT substr(s.session_start, 1, 7) AS month,
           COUNT(*) AS sessions,
           COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM homework_tasks t
                                          WHERE t.encounter = s.encounter)
                             THEN 1 ELSE 0 END), 0) AS with_homework
    FROM homework_sessions s
    WHERE substr(s.session_start, 1, 10) BETWEEN :start AND :end
    GROUP BY substr(s.session_start, 1, 7)
), tasks AS (
    SELECT substr(authored_on, 1, 7) AS month,
           COALESCE(SUM(CASE WHEN review_status IN ('reviewed', 'not-reviewed') THEN 1 ELSE 0 END), 0)
               AS followed_up,
           COALESCE(SUM(CASE WHEN review_status = 'reviewed' THEN 1 ELSE 0 END), 0) AS reviewed
    FROM homework_tasks
    WHERE substr(authored_on, 1, 10) BETWEEN :start AND :end
    GROUP BY substr(authored_on, 1, 7)
)
SELECT s.month, s.sessions, s.with_homework,
       1.0 * s.with_homework / NULLIF(s.sessions, 0) AS assignment_rate,
       COALESCE(t.followed_up, 0) AS followed_up, COALESCE(t.reviewed, 0) AS reviewed,
       1.0 * t.reviewed / NULLIF(t.followed_up, 0) AS review_rate
FROM sessions s LEFT JOIN tasks t ON t.month = s.month
ORDER BY s.month;
