-- Nodes by status level across tenants (latest snapshot per node).
SELECT level, level_rank, count(*) AS nodes, count(DISTINCT tenant) AS tenants
FROM nodes
GROUP BY level, level_rank
ORDER BY level_rank
