COMMENT ON TABLE orders IS 'one row per checkout';
