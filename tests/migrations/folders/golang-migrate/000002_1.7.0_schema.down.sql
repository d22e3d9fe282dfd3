ALTER TABLE accounts DROP COLUMN plan;
ALTER TABLE accounts DROP COLUMN status;
DROP TYPE account_status;
