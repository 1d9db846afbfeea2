-- Share of homework items reviewed at the patient's next session, among items that had a next
-- session (items still awaiting one are counted apart). Parameters: start and end (YYYY-MM-DD), bound by name.
-- Counts are 0 for an empty period (SUM over no rows is NULL); the rate is NULL there.
SELECT COUNT(*) AS tasks,
       COALESCE(SUM(CASE WHEN review_status IN ('reviewed', 'not-reviewed') THEN 1 ELSE 0 END), 0)
           AS followed_up,
       COALESCE(SUM(CASE WHEN review_status = 'reviewed' THEN 1 ELSE 0 END), 0) AS reviewed,
       1.0 * SUM(CASE WHEN review_status = 'reviewed' THEN 1 ELSE 0 END)
           / NULLIF(SUM(CASE WHEN review_status IN ('reviewed', 'not-reviewed') THEN 1 ELSE 0 END), 0)
           AS review_rate
FROM homework_tasks
WHERE substr(authored_on, 1, 10) BETWEEN :start AND :end;
