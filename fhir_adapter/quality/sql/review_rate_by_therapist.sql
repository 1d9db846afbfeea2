-- Review rate per therapist in a period (e.g. a quarter: start 2025-01-01, end 2025-03-31).
SELECT practitioner, practitioner_name,
       COUNT(*) AS tasks,
       COALESCE(SUM(CASE WHEN review_status IN ('reviewed', 'not-reviewed') THEN 1 ELSE 0 END), 0)
           AS followed_up,
       COALESCE(SUM(CASE WHEN review_status = 'reviewed' THEN 1 ELSE 0 END), 0) AS reviewed,
       1.0 * SUM(CASE WHEN review_status = 'reviewed' THEN 1 ELSE 0 END)
           / NULLIF(SUM(CASE WHEN review_status IN ('reviewed', 'not-reviewed') THEN 1 ELSE 0 END), 0)
           AS review_rate
FROM homework_tasks
WHERE substr(authored_on, 1, 10) BETWEEN :start AND :end
GROUP BY practitioner, practitioner_name
ORDER BY practitioner;
