-- The event rate per minute over the last 24 hours.
SELECT date_trunc('minute', time) AS minute, count(*) AS events
FROM events
WHERE time >= now() - INTERVAL '24 hours'
GROUP BY date_trunc('minute', time)
ORDER BY minute
