CREATE INDEX CONCURRENTLY accounts_plan ON accounts (plan);
