-- Active critical and fatal events across the estate.
SELECT tenant, node, event, element, level, start_time
FROM active_events
WHERE level_rank >= 4
ORDER BY tenant, node, event, element
