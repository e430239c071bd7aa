-- One node's events in a time range (hours 2 to 14 of the tenant's data).
SELECT time, event, element, level, state, details
FROM events
WHERE tenant = 'tenant-001' AND node = 'tenant-001-node-00007'
  AND time >= (SELECT min(time) FROM events WHERE tenant = 'tenant-001') + INTERVAL '2 hours'
  AND time < (SELECT min(time) FROM events WHERE tenant = 'tenant-001') + INTERVAL '14 hours'
ORDER BY time, event, element
