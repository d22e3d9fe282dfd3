// The real @neondatabase/serverless driver and drizzle-orm against mirrorpool's POST /sql.
// Run by tests/neon/test_*.py: `node client.mjs <scenario> [args...]`, with
//   NEON_ENDPOINT  the fetch endpoint (http://127.0.0.1:<port>/sql)
//   DATABASE_URL   postgresql://<user>:<key>@<host>/<database>
//   AUTH_TOKEN     optional: the key as the driver's authToken instead
// It prints one JSON line: {"ok": ...} or {"error": {...the NeonDbError's fields}}; the
// Python test asserts on it. Values are described with their JavaScript types, so the
// test sees what an application would.
import { neon, neonConfig } from "@neondatabase/serverless";
import { drizzle } from "drizzle-orm/neon-http";
import { pgTable, serial, text, integer } from "drizzle-orm/pg-core";
import { eq } from "drizzle-orm";
import { PrismaNeonHttp } from "@prisma/adapter-neon";

neonConfig.fetchEndpoint = process.env.NEON_ENDPOINT;
const options = process.env.AUTH_TOKEN ? { authToken: process.env.AUTH_TOKEN } : {};
const sql = neon(process.env.DATABASE_URL, options);
const [scenario, ...args] = process.argv.slice(2);

function describe(value) {
  if (value === null) return { type: "null" };
  if (value instanceof Date) return { type: "Date", value: value.toISOString() };
  if (Buffer.isBuffer(value)) return { type: "Buffer", value: value.toString("hex") };
  if (Array.isArray(value)) return { type: "Array", value: value.map(describe) };
  if (typeof value === "object") {
    // pg-types' PostgresInterval and parsed JSON both land here: keep their own fields.
    return { type: value.constructor?.name ?? "Object", value: { ...value } };
  }
  return { type: typeof value, value };
}

function described(row) {
  return Object.fromEntries(Object.entries(row).map(([k, v]) => [k, describe(v)]));
}

const scenarios = {
  // Every value a parameter, sent as the driver converts it, and read back typed.
  async types() {
    const rows = await sql.query(
      `SELECT $1::int4 AS int4, $2::int8 AS int8, $3::numeric AS numeric, $4::text AS text,
              $5::boolean AS boolean, $6::timestamptz AS timestamptz, $7::date AS date,
              $8::interval AS interval, $9::bytea AS bytea, $10::int[] AS int_array,
              $11::jsonb AS jsonb, $12::uuid AS uuid, $13::text AS nothing,
              '1 year 2 mons 3 days 04:05:06.5'::interval AS literal_interval,
              '1 day'::interval::text AS interval_text`,
      [
        42,
        "9007199254740993",
        "12345.678901234567890123",
        "héllo 'quoted' \\ text",
        true,
        new Date("2024-05-01T09:30:00.123Z"),
        "2024-02-29",
        "1 day 02:03:04",
        Buffer.from([0, 1, 254, 255]),
        [1, null, 3],
        JSON.stringify({ a: [1, 2], b: { c: null }, big: 12345678901234567890 }),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        null,
      ],
    );
    return described(rows[0]);
  },

  async query() {
    const [text, ...params] = args;
    return (await sql.query(text, params)).map(described);
  },

  async full() {
    const [text] = args;
    const result = await sql.query(text, [], { fullResults: true });
    return { command: result.command, rowCount: result.rowCount, fields: result.fields };
  },

  async transaction() {
    const [table, first, second] = args;
    const results = await sql.transaction(
      [
        sql.query(`INSERT INTO ${table} (id, v) VALUES ($1, 'a')`, [first]),
        sql.query(`INSERT INTO ${table} (id, v) VALUES ($1, 'b')`, [second]),
        sql.query(`SELECT count(*)::int AS n FROM ${table}`),
      ],
      { isolationLevel: "Serializable" },
    );
    return results;
  },

  async read_only_transaction() {
    const [table] = args;
    return await sql.transaction(
      (tx) => [tx`SELECT count(*)::int AS n FROM ${sql.unsafe(table)}`],
      { isolationLevel: "Serializable", readOnly: true, deferrable: true },
    );
  },

  // Gives up on a slow query after `ms` (the fetch is aborted: its connection closes).
  async abandon() {
    const [text, ms] = args;
    const signal = AbortSignal.timeout(Number(ms));
    return await sql.query(text, [], { fetchOptions: { signal } });
  },

  async tagged() {
    const id = Number(args[0]);
    return await sql`SELECT ${id}::int + 1 AS next, ${"o'brien"} AS name`;
  },

  // Reads for `seconds`, each recorded with its time; the test kills the primary meanwhile.
  async reads() {
    const [table, seconds] = args;
    const until = Date.now() + Number(seconds) * 1000;
    const outcomes = [];
    while (Date.now() < until) {
      const started = Date.now();
      try {
        const rows = await sql.query(`SELECT count(*)::int AS n FROM ${table}`);
        outcomes.push({ at: started, ok: rows[0].n });
      } catch (e) {
        outcomes.push({ at: started, error: e.message });
      }
      if (outcomes.length === 1) console.error("reading");
    }
    return outcomes;
  },

  // Prisma's client over its HTTP adapter (it has no transactions in HTTP mode).
  async prisma() {
    const { PrismaClient } = (await import("./node_modules/.mirrorpool-prisma/index.js")).default;
    const prisma = new PrismaClient({ adapter: new PrismaNeonHttp(process.env.DATABASE_URL, {}) });
    const created = await prisma.note.create({ data: { title: "first", stars: 3 } });
    await prisma.note.createMany({ data: [{ title: "second" }, { title: "third", stars: 5 }] });
    const found = await prisma.note.findMany({ where: { stars: { gte: 3 } }, orderBy: { id: "asc" } });
    const updated = await prisma.note.update({ where: { title: "second" }, data: { stars: 1 } });
    const counted = await prisma.note.count();
    let duplicate = null;
    try {
      await prisma.note.create({ data: { title: "first" } });
    } catch (e) {
      duplicate = { name: e.name, code: e.code, message: e.message, meta: e.meta ?? null };
    }
    return { created, found, updated, counted, duplicate };
  },

  async drizzle() {
    const [table] = args;
    const notes = pgTable(table, {
      id: serial("id").primaryKey(),
      title: text("title").notNull(),
      stars: integer("stars"),
    });
    const db = drizzle({ client: sql });
    const inserted = await db.insert(notes).values({ title: "first", stars: 3 }).returning();
    const found = await db.select().from(notes).where(eq(notes.title, "first"));
    const batch = await db.batch([
      db.insert(notes).values({ title: "second", stars: 5 }).returning({ id: notes.id }),
      db.update(notes).set({ stars: 4 }).where(eq(notes.title, "first")).returning(),
      db.select({ title: notes.title, stars: notes.stars }).from(notes).orderBy(notes.id),
    ]);
    return { inserted, found, batch };
  },
};

try {
  const ok = await scenarios[scenario]();
  console.log(JSON.stringify({ ok }));
} catch (e) {
  const fields = {};
  for (const name of ["name", "message", "code", "constraint", "detail", "severity", "table",
                      "position", "schema"]) {
    fields[name] = e[name] ?? null;
  }
  if (e.cause) fields.cause = { message: e.cause.message, code: e.cause.code ?? null };
  console.log(JSON.stringify({ error: fields }));
}
