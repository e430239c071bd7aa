-- Poller health: last heartbeat, last seq and status per poller.
SELECT tenant, poller, epoch, last_seq, last_heartbeat, status
FROM pollers
ORDER BY tenant, poller
