"""The catalog queries app/sql/schema_code.py reads code out of the parse tree's sight with:
what each relation runs when read or written, what types run when made, what writing a
relation writes too, the names of the database's own functions and operators, and the
fingerprint that says whether any of it changed."""

# The first OID of an object made after initdb: the database's own, or a superuser's.
_FIRST_NORMAL_OID = 16384

# The schemas of the database's own (not the catalog's).
_OURS = (
    "NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace,"
    " 'pg_toast'::regnamespace)"
)

# Each partitioned table and its partitions, to any depth, as pg_partition_tree() gives them
# but through pg_inherits, taking no lock (pg_partition_tree() locks each partition). For a
# WITH RECURSIVE.
_PARTITION_TREE = """tree AS (
    SELECT p.partrelid AS root, p.partrelid AS relid FROM pg_catalog.pg_partitioned_table p
    UNION
    SELECT t.root, i.inhrelid FROM tree t JOIN pg_catalog.pg_inherits i ON i.inhparent = t.relid
)"""

# The operator classes whose family holds a support function or an operator of the
# database's own (an extension's in its schema, or one a superuser made): an index using one
# runs that code on every write and scan, and a type's default B-tree or hash class on every
# sort, grouping, DISTINCT or hash of its values. Needs `own` (the own functions). For a WITH.
_OWN_CLASSES = """own_classes AS (
    SELECT c.oid, c.opcintype, c.opcdefault, c.opcmethod FROM pg_catalog.pg_opclass c
    WHERE c.opcfamily IN (
        SELECT a.amprocfamily FROM pg_catalog.pg_amproc a WHERE a.amproc IN (SELECT oid FROM own)
        UNION
        SELECT o.amopfamily FROM pg_catalog.pg_amop o
        JOIN pg_catalog.pg_operator op ON op.oid = o.amopopr
        WHERE op.oprcode IN (SELECT oid FROM own))
)"""

# The code each relation runs, as PostgreSQL prints it back: (relation, runs when read, runs
# when written, text or NULL when any text counts). A partition key's expressions run when a
# row is routed into the partitioned table, and as its partitions' constraint when one is
# written directly: they count for the whole partition tree (a sub-partitioned table's own
# key for its own subtree). The catalog records no dependency on
# pinned (built-in) functions, so the texts are read with the tree; the database's own
# functions, operators and casts are found by dependency as well (CODE_DEPENDENCIES_SQL).
# Printing an expression back takes a lock on the relations it names, so what names a
# relation another session holds (or waits for) in ACCESS EXCLUSIVE mode (a LOCK TABLE, a
# migration's ALTER) is not printed but counted as code (NULL): the reading need not wait for
# the lock, and the relation runs nothing meanwhile anyway; a last row (0, false, false,
# 'held') says so, and such a reading holds only until the lock is gone.
CODE_TEXTS_SQL = f"""
WITH RECURSIVE held AS (
    SELECT l.relation AS oid FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
      AND l.pid <> pg_catalog.pg_backend_pid() AND l.database = (
          SELECT d.oid FROM pg_catalog.pg_database d
          WHERE d.datname = pg_catalog.current_database())
), blocked AS (
    SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
    WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid IN (SELECT oid FROM held)
), {_PARTITION_TREE}
SELECT r.ev_class, r.ev_type = '1', r.ev_type <> '1',
       CASE WHEN r.ev_class IN (SELECT oid FROM held) OR (
                'pg_catalog.pg_rewrite'::regclass, r.oid) IN (SELECT * FROM blocked)
            THEN NULL ELSE pg_catalog.pg_get_ruledef(r.oid) END
FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
WHERE c.relnamespace {_OURS}
UNION ALL
SELECT p.polrelid, true, true,
       CASE WHEN p.polrelid IN (SELECT oid FROM held) OR (
                'pg_catalog.pg_policy'::regclass, p.oid) IN (SELECT * FROM blocked)
            THEN NULL ELSE 'SELECT '
                || coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), 'true') || ', '
                || coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), 'true') END
FROM pg_catalog.pg_policy p
UNION ALL
SELECT a.adrelid, false, true,
       CASE WHEN a.adrelid IN (SELECT oid FROM held) THEN NULL
            ELSE 'SELECT ' || pg_catalog.pg_get_expr(a.adbin, a.adrelid) END
FROM pg_catalog.pg_attrdef a JOIN pg_catalog.pg_class c ON c.oid = a.adrelid
WHERE c.relnamespace {_OURS}
UNION ALL
SELECT k.conrelid, true, true,
       CASE WHEN k.conrelid IN (SELECT oid FROM held) THEN NULL
            ELSE 'SELECT ' || pg_catalog.pg_get_expr(k.conbin, k.conrelid) END
FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
WHERE k.contype = 'c' AND c.relnamespace {_OURS}
UNION ALL
SELECT i.indrelid, true, true,
       CASE WHEN i.indrelid IN (SELECT oid FROM held) THEN NULL
            ELSE pg_catalog.pg_get_indexdef(i.indexrelid) END
FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
WHERE (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL) AND c.relnamespace {_OURS}
UNION ALL
SELECT t.tgrelid, false, true, NULL
FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal AND t.tgenabled <> 'D'
UNION ALL
SELECT r.relid, true, true,
       CASE WHEN p.partrelid IN (SELECT oid FROM held) THEN NULL
            ELSE 'SELECT ' || pg_catalog.pg_get_expr(p.partexprs, p.partrelid) END
FROM pg_catalog.pg_partitioned_table p JOIN pg_catalog.pg_class c ON c.oid = p.partrelid
JOIN tree r ON r.root = p.partrelid
WHERE p.partexprs IS NOT NULL AND c.relnamespace {_OURS}
UNION ALL
SELECT 0, false, false, 'held' WHERE EXISTS (SELECT FROM held)
"""

# What an object may depend on and still run nothing of the database's own by that
# dependency: what the other readings follow themselves (relations, types, constraints,
# triggers, defaults, rules, policies, statistics), and what holds no code (schemas,
# collations, the extension an object belongs to). Any other object of the database's own
# (OID from 16384 up) an object depends on counts as code: a function, an operator, a cast,
# an operator class or family, an access method, a foreign server (a foreign table's reading
# runs its wrapper, whose connections outlive DISCARD ALL), a text search configuration, a
# conversion, and whatever kind PostgreSQL adds next. Default closed: a way to reach code
# that no reading here names is still counted, as long as the catalog records the
# dependency, which it does for every object an expression or a definition uses.
_MAY_HOLD_CODE = f"""SELECT k.oid FROM pg_catalog.pg_class k
        WHERE k.oid < {_FIRST_NORMAL_OID} AND k.relnamespace = 'pg_catalog'::regnamespace
          AND k.relkind = 'r' AND k.relname NOT IN (
            'pg_class', 'pg_type', 'pg_constraint', 'pg_trigger', 'pg_attrdef', 'pg_rewrite',
            'pg_policy', 'pg_statistic_ext', 'pg_namespace', 'pg_collation', 'pg_extension')"""

# Objects that depend on one of the database's own that may hold code (_MAY_HOLD_CODE): one
# index range of pg_depend per catalog (OFFSET 0 keeps the planner from joining the whole of
# pg_depend instead: 0.2 ms against 2-3 ms with 300 tables). For a WITH.
_USES = f"""uses AS (
    SELECT d.classid, d.objid FROM ({_MAY_HOLD_CODE}) k, LATERAL (
        SELECT e.classid, e.objid FROM pg_catalog.pg_depend e
        WHERE e.refclassid = k.oid AND e.refobjid >= {_FIRST_NORMAL_OID} OFFSET 0) d
)"""

# Objects that use an object of the database's own that may hold code (_MAY_HOLD_CODE), by
# dependency: a relation itself (its access method, its foreign server, a partitioned table's
# key, recorded on it), its indexes, rules, policies, defaults, constraints and statistics.
# And the relations with an index of an operator class that runs such code (_OWN_CLASSES),
# read or written.
CODE_DEPENDENCIES_SQL = f"""
WITH RECURSIVE {_PARTITION_TREE}, own AS (
    SELECT p.oid FROM pg_catalog.pg_proc p WHERE p.pronamespace {_OURS}
), {_OWN_CLASSES}, {_USES}
SELECT c.oid, true, true FROM pg_catalog.pg_class c
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND c.relnamespace {_OURS}
  AND c.oid IN (SELECT objid FROM uses WHERE classid = 'pg_catalog.pg_class'::regclass)
UNION ALL
SELECT r.ev_class, r.ev_type = '1', r.ev_type <> '1' FROM pg_catalog.pg_rewrite r
WHERE r.oid IN (SELECT objid FROM uses WHERE classid = 'pg_catalog.pg_rewrite'::regclass)
UNION ALL
SELECT p.polrelid, true, true FROM pg_catalog.pg_policy p
WHERE p.oid IN (SELECT objid FROM uses WHERE classid = 'pg_catalog.pg_policy'::regclass)
UNION ALL
SELECT a.adrelid, false, true FROM pg_catalog.pg_attrdef a
WHERE a.oid IN (SELECT objid FROM uses WHERE classid = 'pg_catalog.pg_attrdef'::regclass)
UNION ALL
SELECT k.conrelid, true, true FROM pg_catalog.pg_constraint k
WHERE k.conrelid <> 0
  AND k.oid IN (SELECT objid FROM uses WHERE classid = 'pg_catalog.pg_constraint'::regclass)
UNION ALL
SELECT i.indrelid, true, true FROM pg_catalog.pg_index i
WHERE i.indexrelid IN (SELECT objid FROM uses WHERE classid = 'pg_catalog.pg_class'::regclass)
UNION ALL
SELECT r.relid, true, true
FROM pg_catalog.pg_partitioned_table p JOIN tree r ON r.root = p.partrelid
WHERE p.partrelid IN (SELECT objid FROM uses WHERE classid = 'pg_catalog.pg_class'::regclass)
   OR p.partclass::pg_catalog.oid[] OPERATOR(pg_catalog.&&) ARRAY(SELECT oid FROM own_classes)
UNION ALL
SELECT s.stxrelid, true, true FROM pg_catalog.pg_statistic_ext s
WHERE s.oid IN (SELECT objid FROM uses WHERE classid = 'pg_catalog.pg_statistic_ext'::regclass)
UNION ALL
SELECT i.indrelid, true, true FROM pg_catalog.pg_index i
WHERE i.indclass::pg_catalog.oid[] OPERATOR(pg_catalog.&&) ARRAY(SELECT oid FROM own_classes)
"""

# Code that making a value of a type runs, as printed back: (type, text or NULL when it uses
# a function or operator of the database's own, runs when read). A domain's checks run on
# casting to it and on writing a column of it (or of an array or composite holding it, or of
# a domain over it); its DEFAULT runs when a row is written without the column's value, so
# only on writing. Casts whose function is the database's own, by their source or target
# type of the database's own (one of them is: only a type's owner may make a cast; a catalog
# type on the other side runs nothing by itself). Types whose default B-tree or hash
# operator class runs such code (_OWN_CLASSES), a catalog type's too: sorting, grouping or
# hashing a value runs it.
TYPE_CODE_SQL = f"""
WITH own AS (
    SELECT p.oid FROM pg_catalog.pg_proc p WHERE p.pronamespace {_OURS}
), {_OWN_CLASSES}, {_USES}
SELECT k.contypid, CASE WHEN EXISTS (
           SELECT FROM uses u
           WHERE u.classid = 'pg_catalog.pg_constraint'::regclass AND u.objid = k.oid)
       THEN NULL ELSE 'SELECT ' || pg_catalog.pg_get_expr(k.conbin, 0) END, true
FROM pg_catalog.pg_constraint k WHERE k.contype = 'c' AND k.contypid <> 0
UNION ALL
SELECT t.oid, CASE WHEN EXISTS (
           SELECT FROM uses u WHERE u.classid = 'pg_catalog.pg_type'::regclass AND u.objid = t.oid)
       THEN NULL ELSE 'SELECT ' || pg_catalog.pg_get_expr(t.typdefaultbin, 0) END, false
FROM pg_catalog.pg_type t WHERE t.typdefaultbin IS NOT NULL
UNION ALL
SELECT t.oid, NULL, true FROM pg_catalog.pg_type t
WHERE t.typtype <> 'd'
  AND t.oid IN (SELECT objid FROM uses WHERE classid = 'pg_catalog.pg_type'::regclass)
UNION ALL
SELECT v.t, NULL, true FROM pg_catalog.pg_cast k
JOIN pg_catalog.pg_proc p ON p.oid = k.castfunc AND p.pronamespace {_OURS},
LATERAL (VALUES (k.castsource), (k.casttarget)) AS v(t)
JOIN pg_catalog.pg_type ty ON ty.oid = v.t AND ty.typnamespace {_OURS}
UNION ALL
SELECT c.opcintype, NULL, true FROM own_classes c
JOIN pg_catalog.pg_am m ON m.oid = c.opcmethod AND m.amname IN ('btree', 'hash')
WHERE c.opcdefault
"""

# Types and what they are made of (a domain's base, an array's element, a composite's
# fields), the database's own and the catalog's arrays of them.
TYPES_SQL = f"""
SELECT t.oid, t.typname, t.typbasetype, t.typelem, t.typrelid FROM pg_catalog.pg_type t
WHERE t.typnamespace {_OURS} OR t.typtype = 'd'
"""

# Every column of the database's own relations (and of composite types), by type.
COLUMNS_SQL = f"""
SELECT a.attrelid, a.atttypid FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relnamespace {_OURS}
"""

# Writing a relation writes others too: a parent its partitions and inheritance children, a
# referenced table the referencing ones its foreign keys cascade to. (written, also written)
WRITE_EDGES_SQL = """
SELECT i.inhparent, i.inhrelid FROM pg_catalog.pg_inherits i
UNION
SELECT k.confrelid, k.conrelid FROM pg_catalog.pg_constraint k
WHERE k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))
"""

# The database's own operators (a call of their function that no call names).
OWN_OPERATORS_SQL = f"""
SELECT DISTINCT o.oprname FROM pg_catalog.pg_operator o WHERE o.oprnamespace {_OURS}
"""

# The code of the database's own functions in the languages whose code is read for the
# value locks it takes (app/sql/lock_code.py): (name, language, definition or NULL, source,
# argument defaults or NULL). The definition, pg_get_functiondef()'s, is read for PL/pgSQL
# and BEGIN ATOMIC bodies (its prosrc is then empty); a LANGUAGE sql function's source is
# its body's text. The defaults are what a call that leaves an argument out passes.
FUNCTION_CODE_SQL = f"""
SELECT p.proname, l.lanname,
       CASE WHEN l.lanname = 'plpgsql' OR p.prosqlbody IS NOT NULL
            THEN pg_catalog.pg_get_functiondef(p.oid) END,
       CASE WHEN p.prosqlbody IS NULL THEN p.prosrc ELSE '' END,
       pg_catalog.pg_get_expr(p.proargdefaults, 0)
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE p.pronamespace {_OURS} AND p.prokind IN ('f', 'p') AND l.lanname IN ('sql', 'plpgsql')
"""

# The database's own aggregates and the functions each runs (once per row, per group):
# (aggregate, function).
AGGREGATE_FUNCTIONS_SQL = f"""
SELECT p.proname, f.proname FROM pg_catalog.pg_aggregate a
JOIN pg_catalog.pg_proc p ON p.oid = a.aggfnoid
JOIN pg_catalog.pg_proc f ON f.oid IN (a.aggtransfn, a.aggfinalfn, a.aggcombinefn,
     a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn, a.aggserialfn, a.aggdeserialfn)
WHERE p.pronamespace {_OURS}
"""

# The names of functions that return sets (a query's other expressions then run per row).
SET_RETURNING_SQL = """
SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p WHERE p.proretset
"""

# What a view reads (reading it runs their code too; writing an updatable view writes them),
# what a rule's actions write, and what reading a parent reads (its partitions and
# inheritance children, whose indexes scans use): (relation, what it reads, false). What a
# row-level security policy's subqueries read, which reading or writing its table reads:
# (table, what it reads, 'p'). What writing a table reads: a foreign key's check reads the
# referenced table (its unique index), and writing the referenced table reads the
# referencing one: (table, what it reads, 'w').
VIEW_EDGES_SQL = """
SELECT r.ev_class, d.refobjid, 'v'
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
 AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class
UNION
SELECT i.inhparent, i.inhrelid, 'v' FROM pg_catalog.pg_inherits i
UNION
SELECT k.conrelid, k.confrelid, 'w' FROM pg_catalog.pg_constraint k WHERE k.contype = 'f'
UNION
SELECT k.confrelid, k.conrelid, 'w' FROM pg_catalog.pg_constraint k WHERE k.contype = 'f'
UNION
SELECT p.polrelid, d.refobjid, 'p'
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid
 AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> p.polrelid
"""

# Whether an event trigger is enabled: DDL then runs code of the database's own, before
# PostgreSQL checks the statement's privileges (ddl_command_start), even when it does nothing.
EVENT_TRIGGERS_SQL = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger e WHERE e.evtenabled <> 'D')
"""

NAMES_SQL = f"""
SELECT c.oid, c.relname FROM pg_catalog.pg_class c
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND c.relnamespace {_OURS}
"""

OWN_FUNCTIONS_SQL = f"""
SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p WHERE p.pronamespace {_OURS}
"""

# Changes to any of these catalogs change this text: a new row version has a new xmin, a
# dropped row is gone from the sum. (A sum over every row's (oid, xmin), not the largest
# xmin: a change committed by an older transaction after a newer one's keeps the largest.)
# Only the database's own objects count (OIDs from 16384 up: what initdb made only a
# superuser may alter), and none in a temporary schema: another session's temporary objects
# reach no statement of ours, and a table a request makes in its own is the end of its
# connection. So a key creating temporary tables in a loop changes nothing here.
# It casts nothing to text: a cast between catalog types that has no row of its own in
# pg_cast (int8 to text is an I/O conversion) can be given one by a superuser, with a function
# of the database's own, which every such cast then runs; concat_ws() calls the
# types' output functions instead. (A cast with a row from initdb, int4 to int8, cannot be
# replaced or dropped.)
_ROW_KEYS = {
    "pg_inherits": "inhrelid, inhparent",
    "pg_attribute": "attrelid, attnum",
    "pg_index": "indexrelid",
    "pg_partitioned_table": "partrelid",
}
_NAMESPACES = {
    "pg_class": "relnamespace",
    "pg_type": "typnamespace",
    "pg_proc": "pronamespace",
    "pg_operator": "oprnamespace",
    "pg_constraint": "connamespace",
    "pg_statistic_ext": "stxnamespace",
}


def _counted(table: str) -> str:
    """The rows of `table` the fingerprint counts."""
    key = {"pg_inherits": "inhrelid", "pg_attribute": "attrelid"}.get(
        table, _ROW_KEYS.get(table, "oid")
    )
    where = f"{key} >= {_FIRST_NORMAL_OID}"
    if table == "pg_attribute":
        # A column whose type changed in place (no rewrite, so no other row changes) to a
        # type of the database's own: a domain, a composite's attribute. (A catalog type
        # runs nothing of its own; a change back to one only over-counts until the next.)
        where += (
            f" AND atttypid >= {_FIRST_NORMAL_OID} AND attnum > 0"
            " AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c"
            " WHERE c.oid = attrelid AND (pg_catalog.pg_is_other_temp_schema(c.relnamespace)"
            " OR c.relnamespace = pg_catalog.pg_my_temp_schema()))"
        )
    namespace = _NAMESPACES.get(table)
    if namespace is not None:
        where += (
            f" AND NOT pg_catalog.pg_is_other_temp_schema({namespace})"
            f" AND {namespace} <> pg_catalog.pg_my_temp_schema()"
        )
    return where


# Whether the database has added code of its own that built-in names reach, which only a
# superuser can add: a cast between two catalog types with a function of the database's own
# (every `42::text`, `'a' || 42` or assignment of a number to a text column then runs it),
# or a function or operator of its own in pg_catalog (an overload of a catalog function's
# name, `pg_catalog.upper(int)`; an operator), or a catalog function replaced in a procedural
# language (`CREATE OR REPLACE FUNCTION pg_catalog.rpad(text, int) ... LANGUAGE plpgsql`
# keeps its OID; every built-in is internal, C or SQL: languages 12, 13 and 14). Then any
# statement may run such code (SchemaCode.catalog_altered).
ALTERED_SQL = f"""(
EXISTS (SELECT FROM pg_catalog.pg_cast c WHERE c.castfunc >= {_FIRST_NORMAL_OID}
        AND c.castsource < {_FIRST_NORMAL_OID} AND c.casttarget < {_FIRST_NORMAL_OID})
OR EXISTS (SELECT FROM pg_catalog.pg_proc p
           WHERE p.pronamespace = 11 AND p.oid >= {_FIRST_NORMAL_OID}
             AND EXISTS (SELECT FROM pg_catalog.pg_proc q WHERE q.pronamespace = 11
                         AND q.oid < {_FIRST_NORMAL_OID} AND q.proname = p.proname))
OR EXISTS (SELECT FROM pg_catalog.pg_operator o
           WHERE o.oprnamespace = 11 AND o.oid >= {_FIRST_NORMAL_OID})
OR EXISTS (SELECT FROM pg_catalog.pg_proc p
           WHERE p.pronamespace = 11 AND p.prolang NOT IN (12, 13, 14)))"""

FINGERPRINT_SQL = "SELECT pg_catalog.concat_ws(',', " + ", ".join(
    f"(SELECT pg_catalog.concat_ws('.', count(*), coalesce(sum(pg_catalog.hashtext("
    f"pg_catalog.concat_ws('.', {_ROW_KEYS.get(table, 'oid')}, xmin))), 0)) "
    f"FROM pg_catalog.{table} WHERE {_counted(table)})"
    for table in (
        "pg_class", "pg_rewrite", "pg_attrdef", "pg_constraint", "pg_policy", "pg_trigger",
        "pg_proc", "pg_index", "pg_operator", "pg_cast", "pg_type", "pg_inherits",
        "pg_partitioned_table", "pg_opclass", "pg_amproc", "pg_amop", "pg_event_trigger",
        "pg_attribute", "pg_statistic_ext",
    )
) + f"), {ALTERED_SQL}"  # fmt: skip
