-- migrate:up
INSERT INTO tags (name) VALUES ('new'), ('sale');
ALTER TABLE tags ADD COLUMN color text;
UPDATE tags SET color = 'red' WHERE name = 'sale';

-- migrate:down
ALTER TABLE tags DROP COLUMN color;
DELETE FROM tags WHERE name IN ('new', 'sale');
