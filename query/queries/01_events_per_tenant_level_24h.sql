-- Events per tenant and level in the last 24 hours.
SELECT tenant, level, count(*) AS events
FROM events
WHERE time >= now() - INTERVAL '24 hours'
GROUP BY tenant, level
ORDER BY tenant, level
