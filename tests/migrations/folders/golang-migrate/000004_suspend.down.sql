DROP PROCEDURE suspend(int);
