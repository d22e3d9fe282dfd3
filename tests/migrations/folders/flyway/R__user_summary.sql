CREATE OR REPLACE VIEW user_summary AS
SELECT u.id, u.email, count(o.id) AS orders
FROM users AS u LEFT JOIN orders AS o ON o.user_id = u.id
GROUP BY u.id, u.email;
