-- Built without blocking writes: Flyway runs a lone CONCURRENTLY outside a transaction.
CREATE UNIQUE INDEX CONCURRENTLY users_email ON users (lower(email));
