DROP VIEW IF EXISTS user_summary;
DROP TABLE orders;
