-- morph:nontransactional
CREATE PROCEDURE suspend(account int) LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts SET status = 'suspended' WHERE id = account;
END
$$;
