-- migrate:up
CREATE TABLE tags (
    id bigserial PRIMARY KEY,
    name text NOT NULL
);

-- migrate:down
DROP TABLE tags;
