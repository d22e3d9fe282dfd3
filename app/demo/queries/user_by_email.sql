-- description: A user by email address (the quick start's demo table)
-- params: email
-- read_only: true
SELECT id, email, created_at FROM users WHERE email = :email
