CREATE TABLE audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    what text NOT NULL
);

CREATE FUNCTION audit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit (what) VALUES ('order ' || NEW.id);
    RETURN NEW;
END
$$;

CREATE TRIGGER orders_audit AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION audit_order();
