-- A role assignment's ABAC condition, kept and shown as given (spec/arm.md §5.3: store, don't
-- evaluate).
ALTER TABLE arm_role_assignments ADD COLUMN condition TEXT;
ALTER TABLE arm_role_assignments ADD COLUMN condition_version TEXT;
