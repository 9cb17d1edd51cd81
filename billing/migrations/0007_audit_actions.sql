-- One dotted vocabulary of audit actions (common/audit.py AuditAction): the rows written under
-- the older names are renamed, so `audit --action`, the runs list and the paused-runs gauge
-- see one name per action. A meter event push's kind moves from the action into `after`.

UPDATE billing.audit_log SET action = CASE action
        WHEN 'pause_auto_healing' THEN 'run.pause'
        WHEN 'resume_auto_healing' THEN 'run.resume'
        WHEN 'approve_plan' THEN 'run.approve'
        WHEN 'reject_plan' THEN 'run.reject'
        WHEN 'set_usage_counter' THEN 'usage.set_counter'
        WHEN 'cancel_meter_event' THEN 'usage.cancel_meter_event'
    END
 WHERE action IN ('pause_auto_healing', 'resume_auto_healing', 'approve_plan', 'reject_plan',
                  'set_usage_counter', 'cancel_meter_event');

UPDATE billing.audit_log
   SET action = 'usage.push_meter_event',
       after = coalesce(after, '{}'::jsonb)
               || jsonb_build_object('kind', substr(action, length('push_meter_event:') + 1))
 WHERE action LIKE 'push_meter_event:%';

-- The paused-runs index (0002) names the pause/resume actions.
DROP INDEX IF EXISTS billing.audit_log_pause_idx;
CREATE INDEX audit_log_pause_idx
    ON billing.audit_log (workflow_id, at DESC, id DESC)
    WHERE action IN ('run.pause', 'run.resume');
