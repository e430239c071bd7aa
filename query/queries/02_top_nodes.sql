-- The top 10 nodes by event count, across the estate.
SELECT tenant, node, count(*) AS events
FROM events
GROUP BY tenant, node
ORDER BY events DESC, tenant, node
LIMIT 10
