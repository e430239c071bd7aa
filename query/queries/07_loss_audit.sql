-- The loss audit: every gap in the received seq ranges, and lost tails.
SELECT tenant, poller, epoch, first_missing, missing, kind
FROM loss_audit
ORDER BY tenant, poller, epoch, first_missing
