//! Pre-filled old shapes for the backfill scenarios, and write loads that range over the whole
//! pre-filled key space (plus some keys past its end), so live changes land in chunks already
//! copied, in the chunk being copied, and in chunks not reached yet.
//!
//! Every pre-fill leaves the new shape wrong on purpose: NULL where the mapping gives a value,
//! stale values, and in rows mode stale rows, extra lines and rows owned by source keys that do
//! not exist (below the lowest key, in gaps, past the highest). Only a backfill that covers the
//! whole key range, with no gap between chunks, makes the comparison exact.
//!
//! The mappings themselves (spec text and comparison) are `tests/support/mirror/workloads.rs`'s,
//! so live mirroring and backfill are held to the same definition.

use crate::support::mirror::Rng;
use crate::support::mirror::workloads::{
    EVENTS_DDL, IDS_DDL, ORDERS_DDL, TAGS_DDL, USERS_DDL, item, items,
};

/// `users`, ids `1..=n`, with `status` NULL (so every row differs from the mapping until the
/// backfill or a live change fixes it), `is_active` true, false or NULL.
pub fn users_null_status(n: i64) -> String {
    format!(
        "{USERS_DDL};
         INSERT INTO public.users (id, email, is_active)
         SELECT g, 'u' || g || '@example.com', CASE g % 3 WHEN 0 THEN true WHEN 1 THEN false END
         FROM generate_series(1, {n}) AS g;
         ANALYZE public.users"
    )
}

/// `users`, ids `1..=n`: `status` NULL, stale ('bogus', or the opposite value) or already right.
pub fn users_mixed(n: i64) -> String {
    format!(
        "{USERS_DDL};
         INSERT INTO public.users (id, email, is_active, status)
         SELECT g, 'u' || g || '@example.com',
                CASE g % 3 WHEN 0 THEN true WHEN 1 THEN false END,
                CASE g % 4
                    WHEN 0 THEN NULL
                    WHEN 1 THEN 'bogus'
                    WHEN 2 THEN CASE WHEN g % 3 = 0 THEN 'disabled' ELSE 'active' END
                    ELSE CASE WHEN g % 3 = 0 THEN 'active' ELSE 'disabled' END
                END
         FROM generate_series(1, {n}) AS g;
         ANALYZE public.users"
    )
}

/// Random writes to `users` over keys `1..=n` and 10% past it.
pub fn users_step(rng: &mut Rng, n: i64) -> String {
    let k = rng.int(1, n + n / 10);
    let b = *rng.pick(&["true", "false", "NULL"]);
    match rng.below(100) {
        0..30 => format!(
            "INSERT INTO public.users (id, email, is_active) VALUES ({k}, 'n{k}@example.com', {b})
             ON CONFLICT (id) DO UPDATE SET is_active = EXCLUDED.is_active"
        ),
        30..55 => format!("UPDATE public.users SET is_active = NOT is_active WHERE id = {k}"),
        // A range that often straddles a chunk boundary.
        55..65 => format!(
            "UPDATE public.users SET is_active = {b} WHERE id BETWEEN {k} AND {k} + {}",
            rng.int(1, 300)
        ),
        65..75 => format!(
            "UPDATE public.users SET email = 'e{}@example.com' WHERE id = {k}",
            rng.below(1000)
        ),
        // The application writes the new column itself; the recompute must overwrite it.
        75..82 => format!("UPDATE public.users SET status = 'bogus' WHERE id = {k}"),
        _ => format!("DELETE FROM public.users WHERE id = {k}"),
    }
}

/// `accounts` (int key): negative keys, keys around zero, and keys up to `int` max, `id_big`
/// NULL, 0 or right. About `n` rows.
pub fn accounts(n: i64) -> String {
    let half = n / 2;
    format!(
        "{IDS_DDL};
         INSERT INTO public.accounts (id, name, id_big)
         SELECT g, 'a' || g, CASE WHEN g % 7 = 0 THEN 0 WHEN g % 7 = 1 THEN g END
         FROM generate_series(-{half}, {half}) AS g;
         INSERT INTO public.accounts (id, name)
         SELECT 2147483647 - g, 'max' || g FROM generate_series(0, 199) AS g;
         INSERT INTO public.accounts (id, name)
         SELECT -2147483648 + g, 'min' || g FROM generate_series(0, 199) AS g;
         ANALYZE public.accounts"
    )
}

fn account_key(rng: &mut Rng, n: i64) -> i64 {
    let half = n / 2;
    match rng.below(10) {
        0 => rng.int(i32::MAX as i64 - 250, i32::MAX as i64),
        1 => rng.int(i32::MIN as i64, i32::MIN as i64 + 250),
        _ => rng.int(-half - half / 10, half + half / 10),
    }
}

/// Random writes to `accounts`, with primary-key updates (collisions are rejected by the
/// unique index and counted as such by the load).
pub fn accounts_step(rng: &mut Rng, n: i64) -> String {
    let k = account_key(rng, n);
    match rng.below(100) {
        0..30 => format!(
            "INSERT INTO public.accounts (id, name) VALUES ({k}, 'n{k}') ON CONFLICT DO NOTHING"
        ),
        30..50 => format!(
            "UPDATE public.accounts SET id = {} WHERE id = {k}",
            account_key(rng, n)
        ),
        50..65 => format!(
            "UPDATE public.accounts SET name = 'm{}' WHERE id BETWEEN {k} AND {}",
            rng.below(100),
            (k + rng.int(0, 50)).min(i32::MAX as i64)
        ),
        65..75 => format!("UPDATE public.accounts SET id_big = 0 WHERE id = {k}"),
        _ => format!("DELETE FROM public.accounts WHERE id = {k}"),
    }
}

/// `orders` with even ids `2..=2n` (odd ids are gaps), items arrays of 0..4 elements (some SQL
/// NULL, some holding a JSON null); `order_items` holds right rows, wrong rows, extra lines, and
/// rows owned by orders that do not exist: odd ids, 0, negative ids, and past the end.
pub fn orders(n: i64) -> String {
    format!(
        "{ORDERS_DDL};
         INSERT INTO public.orders (id, customer, items)
         SELECT 2 * g, 'c' || g,
                CASE WHEN g % 10 = 0 THEN NULL
                     WHEN g % 10 = 1 THEN '[null, {{\"sku\": \"s0\", \"qty\": 1}}]'::jsonb
                     ELSE (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                      'sku', 's' || ((g * 7 + i) % 50), 'qty', (g + i) % 9)
                                  ORDER BY i), '[]'::jsonb)
                           FROM generate_series(1, g % 5) AS i)
                END
         FROM generate_series(1, {n}) AS g;
         -- Right rows for a quarter of the orders, computed by the mapping itself.
         INSERT INTO public.order_items (order_id, line_no, sku, qty)
         SELECT src.id, i.n, i.v->>'sku', (i.v->>'qty')::int
         FROM public.orders AS src,
              jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)
         WHERE src.id % 8 = 0;
         -- Wrong quantities.
         INSERT INTO public.order_items (order_id, line_no, sku, qty)
         SELECT src.id, i.n, i.v->>'sku', (i.v->>'qty')::int + 100
         FROM public.orders AS src,
              jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)
         WHERE src.id % 8 = 2;
         -- A line past the end of the array.
         INSERT INTO public.order_items (order_id, line_no, sku, qty)
         SELECT id, 99, 'extra', 1 FROM public.orders WHERE id % 8 = 4;
         -- Rows of orders that do not exist.
         INSERT INTO public.order_items (order_id, line_no, sku, qty)
         SELECT o, 1, 'orphan', 1
         FROM (SELECT 2 * g + 1 FROM generate_series(0, {n}, 97) AS g
               UNION ALL VALUES (0), (-5), (-1000000), (2 * {n} + 2), (1000000000000)) AS t(o);
         -- A target without a unique key (replace-by-owner, rows compared as multisets):
         -- duplicates that must stay, duplicates that must go, orphans.
         CREATE TABLE public.order_skus (order_id bigint NOT NULL, sku text);
         CREATE INDEX ON public.order_skus (order_id);
         INSERT INTO public.order_skus (order_id, sku)
         SELECT src.id, i.v->>'sku'
         FROM public.orders AS src, jsonb_array_elements(src.items) AS i(v)
         WHERE src.id % 6 = 0;
         INSERT INTO public.order_skus (order_id, sku)
         SELECT src.id, i.v->>'sku'
         FROM public.orders AS src, jsonb_array_elements(src.items) AS i(v)
         WHERE src.id % 6 IN (0, 2);
         INSERT INTO public.order_skus VALUES (-3, 'orphan'), (3, 'orphan'), (3, 'orphan'),
                                              (2 * {n} + 10, NULL);
         ANALYZE public.orders; ANALYZE public.order_items; ANALYZE public.order_skus"
    )
}

/// Rows mode into a target without a unique key: one row per item, duplicates and all.
pub const ORDER_SKUS_SELECT: &str = "SELECT src.id AS order_id, i.v->>'sku' AS sku
FROM jsonb_array_elements(src.items) AS i(v)";

/// Random writes to `orders` over ids `1..=2n` and past the end: new orders in the gaps,
/// items appended, removed (renumbering later lines), reversed, edited, orders deleted.
pub fn orders_step(rng: &mut Rng, n: i64) -> String {
    let k = rng.int(1, 2 * n + n / 5);
    match rng.below(100) {
        0..25 => format!(
            "INSERT INTO public.orders (id, customer, items) VALUES ({k}, 'c{k}', {items})
             ON CONFLICT (id) DO UPDATE SET items = EXCLUDED.items",
            items = items(rng)
        ),
        25..40 => format!(
            "UPDATE public.orders SET items = coalesce(items, '[]') || jsonb_build_array('{}'::jsonb)
             WHERE id = {k}",
            item(rng)
        ),
        40..52 => format!(
            "UPDATE public.orders SET items = items - {} WHERE id = {k}",
            rng.below(4)
        ),
        52..60 => format!(
            "UPDATE public.orders SET items = (
                 SELECT coalesce(jsonb_agg(e.v ORDER BY e.n DESC), '[]')
                 FROM jsonb_array_elements(orders.items) WITH ORDINALITY AS e(v, n))
             WHERE id BETWEEN {k} AND {k} + {} AND jsonb_typeof(items) = 'array'",
            rng.int(0, 40)
        ),
        60..70 => format!(
            "UPDATE public.orders SET items = jsonb_set(items, '{{0,qty}}', '{}')
             WHERE id = {k} AND jsonb_typeof(items->0) = 'object'",
            rng.int(0, 9)
        ),
        70..80 => format!(
            "UPDATE public.orders SET customer = 'd{}' WHERE id = {k}",
            rng.below(100)
        ),
        _ => format!("DELETE FROM public.orders WHERE id = {k}"),
    }
}

/// `events` with ids `1..=n` and kinds a, b, c, NULL; `events_a` and `events_b` hold right
/// rows, rows of the wrong kind, stale payloads and rows of events that do not exist.
pub fn events(n: i64) -> String {
    format!(
        "{EVENTS_DDL};
         INSERT INTO public.events (id, kind, payload)
         SELECT g, (ARRAY['a', 'b', 'c', NULL, 'a'])[g % 5 + 1],
                CASE WHEN g % 11 = 0 THEN NULL ELSE 'p' || g END
         FROM generate_series(1, {n}) AS g;
         -- Right rows for some, stale payloads for others, and b events in the a table.
         INSERT INTO public.events_a (id, payload)
         SELECT id, CASE WHEN id % 3 = 0 THEN payload ELSE 'stale' END
         FROM public.events WHERE kind IN ('a', 'b') AND id % 2 = 0;
         INSERT INTO public.events_b (id, payload, kind)
         SELECT id, payload, kind FROM public.events WHERE kind = 'c' AND id % 4 = 0;
         INSERT INTO public.events_b (id, payload, kind)
         VALUES (-1, 'orphan', 'b'), (0, 'orphan', 'b'), ({n} + 1000, 'orphan', 'b');
         ANALYZE public.events; ANALYZE public.events_a; ANALYZE public.events_b"
    )
}

fn kind(rng: &mut Rng) -> &'static str {
    const KINDS: [&str; 6] = ["'a'", "'b'", "'a'", "'b'", "'c'", "NULL"];
    KINDS[rng.below(6) as usize]
}

/// Random writes to `events`: kinds change (rows move between the targets or out of both),
/// alone and in ranges, payloads change, events come and go.
pub fn events_step(rng: &mut Rng, n: i64) -> String {
    let k = rng.int(1, n + n / 10);
    match rng.below(100) {
        0..25 => format!(
            "INSERT INTO public.events VALUES ({k}, {}, 'p{}') ON CONFLICT (id) DO NOTHING",
            kind(rng),
            rng.below(100)
        ),
        25..50 => format!(
            "UPDATE public.events SET kind = {} WHERE id = {k}",
            kind(rng)
        ),
        50..60 => format!(
            "UPDATE public.events
             SET kind = CASE kind WHEN 'a' THEN 'b' WHEN 'b' THEN 'a' ELSE kind END
             WHERE id BETWEEN {k} AND {k} + {}",
            rng.int(1, 200)
        ),
        60..78 => {
            let payload = if rng.chance(20) {
                "NULL".to_owned()
            } else {
                format!("'q{}'", rng.below(100))
            };
            format!("UPDATE public.events SET payload = {payload} WHERE id = {k}")
        }
        _ => format!("DELETE FROM public.events WHERE id = {k}"),
    }
}

/// `profiles` with ids `1..=n`: `tags` unsorted, with duplicates and NULL elements, or NULL;
/// `legacy_tags` likewise. The mapping merges them into a sorted, distinct array.
pub fn profiles(n: i64) -> String {
    format!(
        "{TAGS_DDL};
         INSERT INTO public.profiles (id, tags, legacy_tags)
         SELECT g,
                CASE WHEN g % 9 = 0 THEN NULL
                     ELSE ARRAY['t' || (g % 7), 't' || (g % 3), 't' || (g % 7),
                                CASE WHEN g % 5 = 0 THEN NULL ELSE 't9' END] END,
                CASE WHEN g % 4 = 0 THEN NULL ELSE ARRAY['t' || (g % 4), 'legacy'] END
         FROM generate_series(1, {n}) AS g;
         ANALYZE public.profiles"
    )
}

fn tag_array(rng: &mut Rng) -> String {
    if rng.chance(15) {
        return "NULL".to_owned();
    }
    let n = rng.int(0, 4);
    let tags: Vec<String> = (0..n)
        .map(|_| {
            if rng.chance(10) {
                "NULL".to_owned()
            } else {
                format!("'t{}'", rng.below(8))
            }
        })
        .collect();
    format!("ARRAY[{}]::text[]", tags.join(", "))
}

/// Random writes to `profiles`: the application keeps appending to the column the mapping
/// rewrites, and replaces both arrays.
pub fn profiles_step(rng: &mut Rng, n: i64) -> String {
    let k = rng.int(1, n + n / 10);
    match rng.below(100) {
        0..25 => format!(
            "INSERT INTO public.profiles VALUES ({k}, {}, {}) ON CONFLICT (id) DO NOTHING",
            tag_array(rng),
            tag_array(rng)
        ),
        25..50 => format!(
            "UPDATE public.profiles SET tags = array_append(tags, 't{}') WHERE id BETWEEN {k} AND {k} + {}",
            rng.below(10),
            rng.int(0, 30)
        ),
        50..65 => format!(
            "UPDATE public.profiles SET legacy_tags = {} WHERE id = {k}",
            tag_array(rng)
        ),
        65..80 => format!(
            "UPDATE public.profiles SET tags = {} WHERE id = {k}",
            tag_array(rng)
        ),
        _ => format!("DELETE FROM public.profiles WHERE id = {k}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Composite keys

/// `ledger`, primary key `(tenant_id, id)`, heavily skewed: tenant 7 holds `big` rows, tenants
/// -3..=3000 hold one to three rows each, and ids repeat across tenants. Chunk boundaries fall
/// inside tenant 7 and across many small tenants.
pub fn ledger(big: i64) -> String {
    format!(
        "CREATE TABLE public.ledger (
             tenant_id int NOT NULL,
             id bigint NOT NULL,
             amount numeric(12, 2),
             amount_cents bigint,
             PRIMARY KEY (tenant_id, id));
         INSERT INTO public.ledger SELECT 7, g, g * 1.25 FROM generate_series(1, {big}) AS g;
         INSERT INTO public.ledger
         SELECT t, i, (t * 10 + i) / 100.0, CASE WHEN i = 2 THEN -1 END
         FROM generate_series(-3, 3000) AS t, generate_series(1, 1 + abs(t) % 3) AS i
         WHERE t <> 7;
         ANALYZE public.ledger"
    )
}

pub const LEDGER_EXPR: &str = "(amount * 100)::bigint";

pub fn ledger_step(rng: &mut Rng, big: i64) -> String {
    let (t, i) = if rng.chance(50) {
        (7, rng.int(1, big + 200))
    } else {
        (rng.int(-5, 3050), rng.int(1, 4))
    };
    match rng.below(100) {
        0..30 => format!(
            "INSERT INTO public.ledger (tenant_id, id, amount) VALUES ({t}, {i}, {}.{:02})
             ON CONFLICT (tenant_id, id) DO UPDATE SET amount = EXCLUDED.amount",
            rng.int(-500, 500),
            rng.below(100)
        ),
        30..55 => format!(
            "UPDATE public.ledger SET amount = amount + 1 WHERE tenant_id = {t} AND id BETWEEN {i} AND {i} + {}",
            rng.int(0, 20)
        ),
        // A key change, within and across tenants.
        55..65 => format!(
            "UPDATE public.ledger SET tenant_id = {}, id = id + 100000 WHERE tenant_id = {t} AND id = {i}",
            rng.int(-5, 3050)
        ),
        65..72 => {
            format!("UPDATE public.ledger SET amount_cents = 0 WHERE tenant_id = {t} AND id = {i}")
        }
        _ => format!("DELETE FROM public.ledger WHERE tenant_id = {t} AND id = {i}"),
    }
}

/// Regions of `shipments`: text key parts that sort awkwardly, or would break a naive
/// array literal or quoting (the checkpoint stores bounds as `text[]`).
pub const REGIONS: [&str; 12] = [
    "",
    " ",
    "EU",
    "eu",
    "us-east",
    "Ünïcode",
    "a b",
    "x,y",
    "{b}",
    "q\"t",
    "NULL",
    "back\\slash",
];

/// `shipments` keyed by the spec's `key = ["region", "order_no"]` (a unique constraint; the
/// primary key is a surrogate), skewed: region "EU" holds `big` orders, every other region a
/// few, with negative order numbers. `parcels` holds stale rows and rows of missing keys.
pub fn shipments(big: i64) -> String {
    let regions: Vec<String> = REGIONS.iter().map(|r| sql_literal(r)).collect();
    format!(
        "CREATE TABLE public.shipments (
             id bigserial PRIMARY KEY,
             region text NOT NULL,
             order_no int NOT NULL,
             parcels jsonb,
             CONSTRAINT shipments_key UNIQUE (region, order_no));
         ALTER TABLE public.shipments REPLICA IDENTITY USING INDEX shipments_key;
         CREATE TABLE public.parcels (
             region text NOT NULL,
             order_no int NOT NULL,
             n bigint NOT NULL,
             weight int,
             PRIMARY KEY (region, order_no, n));
         INSERT INTO public.shipments (region, order_no, parcels)
         SELECT 'EU', g, (SELECT coalesce(jsonb_agg(jsonb_build_object('w', g + p) ORDER BY p), '[]')
                          FROM generate_series(1, g % 4) AS p)
         FROM generate_series(1, {big}) AS g;
         INSERT INTO public.shipments (region, order_no, parcels)
         SELECT r, o, jsonb_build_array(jsonb_build_object('w', o), jsonb_build_object('w', -o))
         FROM unnest(ARRAY[{}]) AS r, generate_series(-20, 20) AS o
         WHERE r <> 'EU';
         INSERT INTO public.parcels VALUES
             ('EU', 1, 1, 12345), ('EU', 1, 7, 1), ('EU', -1, 1, 1), ('', -21, 1, 1),
             ('zzz', 0, 1, 1), ('  ', 0, 1, 1), ('x,y', 3, 9, 9);
         ANALYZE public.shipments",
        regions.join(", ")
    )
}

pub const PARCELS_SELECT: &str =
    "SELECT src.region, src.order_no, p.n AS n, (p.v->>'w')::int AS weight
FROM jsonb_array_elements(src.parcels) WITH ORDINALITY AS p(v, n)";

pub fn shipments_step(rng: &mut Rng, big: i64) -> String {
    let (region, o) = if rng.chance(50) {
        ("'EU'".to_owned(), rng.int(1, big + 100))
    } else {
        (any_region(rng), rng.int(-25, 25))
    };
    match rng.below(100) {
        0..30 => format!(
            "INSERT INTO public.shipments (region, order_no, parcels) VALUES ({region}, {o}, {})
             ON CONFLICT (region, order_no) DO UPDATE SET parcels = EXCLUDED.parcels",
            parcels(rng)
        ),
        30..50 => format!(
            "UPDATE public.shipments SET parcels = coalesce(parcels, '[]') || '[{{\"w\": {}}}]'
             WHERE region = {region} AND order_no = {o}",
            rng.int(0, 50)
        ),
        50..60 => format!(
            "UPDATE public.shipments SET parcels = parcels - 0 WHERE region = {region} AND order_no = {o}"
        ),
        // A key change: the parcels change owner.
        60..70 => format!(
            "UPDATE public.shipments SET region = {}, order_no = order_no + 1000
             WHERE region = {region} AND order_no = {o}",
            any_region(rng)
        ),
        _ => format!("DELETE FROM public.shipments WHERE region = {region} AND order_no = {o}"),
    }
}

fn any_region(rng: &mut Rng) -> String {
    let r: &&str = rng.pick(&REGIONS);
    sql_literal(r)
}

/// A parcels array of 0..=3 elements (some without a weight), or SQL NULL.
fn parcels(rng: &mut Rng) -> String {
    if rng.chance(10) {
        return "NULL".to_owned();
    }
    let elems: Vec<String> = (0..rng.int(0, 3))
        .map(|_| {
            if rng.chance(15) {
                "{}".to_owned()
            } else {
                format!("{{\"w\": {}}}", rng.int(-5, 50))
            }
        })
        .collect();
    format!("'[{}]'::jsonb", elems.join(", "))
}

/// A SQL string literal (standard_conforming_strings is on).
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

// ---------------------------------------------------------------------------------------------
// Sparse, skewed and awkward keys

/// `sparse` (bigint key): 1..=100, then a dense run from 10^9, a sparse run from 10^15 in steps
/// of 10^9, negative keys, and both ends of bigint. `doubled` is NULL.
pub const SPARSE: &str = "
    CREATE TABLE public.sparse (id bigint PRIMARY KEY, v int, doubled bigint);
    INSERT INTO public.sparse (id, v) SELECT g, g FROM generate_series(1, 100) AS g;
    INSERT INTO public.sparse (id, v) SELECT 1000000000 + g, g % 1000 FROM generate_series(0, 2999) AS g;
    INSERT INTO public.sparse (id, v) SELECT 1000000000000000 + g::bigint * 1000000000, -g FROM generate_series(0, 499) AS g;
    INSERT INTO public.sparse (id, v) SELECT -g * 7, g FROM generate_series(1, 300) AS g;
    INSERT INTO public.sparse (id, v) VALUES
        (-9223372036854775808, 1), (-9223372036854775807, 2),
        (9223372036854775806, 3), (9223372036854775807, 4), (0, 5);
    ANALYZE public.sparse";

pub const SPARSE_EXPR: &str = "v::bigint * 2";

/// Text keys that sort awkwardly or need quoting in an array literal, numeric keys of every
/// scale (and NaN), timestamptz keys including infinities and BC. With one row per chunk each
/// of them becomes a stored chunk bound and is cast back from text.
pub fn awkward_keys() -> String {
    let text_keys = [
        "",
        " ",
        "  ",
        "a",
        "A",
        "b",
        "10",
        "9",
        "ü",
        "Ü",
        "🙂 emoji",
        "with,comma",
        "{braces}",
        "quote\"d",
        "single'quote",
        "back\\slash",
        "NULL",
        "null",
        "tab\there",
        "new\nline",
        "(1,2)",
        "\u{7f}",
        "zzzz",
    ];
    let mut keys: Vec<String> = text_keys.iter().map(|k| sql_literal(k)).collect();
    keys.push("repeat('long', 300)".to_owned());
    format!(
        "CREATE TABLE public.tkeys (k text PRIMARY KEY, v text, v_len int);
         INSERT INTO public.tkeys (k, v) SELECT k, k || '!' FROM unnest(ARRAY[{}]) AS k;
         INSERT INTO public.tkeys (k, v) SELECT 'k' || g, md5(g::text) FROM generate_series(1, 60) AS g;
         CREATE TABLE public.nkeys (k numeric PRIMARY KEY, v int, w int);
         INSERT INTO public.nkeys (k, v) VALUES
             (-1e20, 1), (-1, 2), (-0.5, 3), (0, 4), (1e-20, 5), (0.1, 6), (1, 7), (1.5, 8),
             (2, 9), (123456789.123456789, 10), (1e20, 11), ('NaN', 12);
         INSERT INTO public.nkeys (k, v) SELECT g / 7.0, g FROM generate_series(20, 60) AS g;
         CREATE TABLE public.tskeys (k timestamptz PRIMARY KEY, v int, w int);
         INSERT INTO public.tskeys (k, v) VALUES
             ('-infinity', 1), ('infinity', 2), ('0044-03-15 12:00:00+00 BC', 3),
             ('1999-12-31 23:59:59.999999+00', 4), ('2000-01-01 00:00:00+00', 5),
             ('2024-02-29 12:34:56.5+05:30', 6);
         INSERT INTO public.tskeys (k, v)
         SELECT '2020-01-01 00:00:00+00'::timestamptz + g * interval '61 minutes 1.25 seconds', g
         FROM generate_series(1, 40) AS g;
         ANALYZE public.tkeys; ANALYZE public.nkeys; ANALYZE public.tskeys",
        keys.join(", ")
    )
}

// ---------------------------------------------------------------------------------------------
// A partitioned source

/// `ledger_p`, range-partitioned on its bigint key: a partition of negative keys, a sparse one,
/// a dense one, an empty one, and one from 2*10^6 to MAXVALUE. `doubled` is NULL. Changes are
/// published as the root (publish_via_partition_root), chunks range over the root's key order.
pub const PARTITIONED: &str = "
    CREATE TABLE public.ledger_p (id bigint NOT NULL, amount int, doubled bigint, PRIMARY KEY (id))
        PARTITION BY RANGE (id);
    CREATE TABLE public.ledger_p_neg PARTITION OF public.ledger_p FOR VALUES FROM (MINVALUE) TO (0);
    CREATE TABLE public.ledger_p_sparse PARTITION OF public.ledger_p FOR VALUES FROM (0) TO (1000);
    CREATE TABLE public.ledger_p_dense PARTITION OF public.ledger_p FOR VALUES FROM (1000) TO (1000000);
    CREATE TABLE public.ledger_p_empty PARTITION OF public.ledger_p FOR VALUES FROM (1000000) TO (2000000);
    CREATE TABLE public.ledger_p_high PARTITION OF public.ledger_p FOR VALUES FROM (2000000) TO (MAXVALUE);
    INSERT INTO public.ledger_p (id, amount) SELECT -g, g FROM generate_series(1, 500) AS g;
    INSERT INTO public.ledger_p (id, amount) SELECT g, g FROM generate_series(0, 999, 13) AS g;
    INSERT INTO public.ledger_p (id, amount) SELECT g, g % 1000 FROM generate_series(1000, 12999) AS g;
    INSERT INTO public.ledger_p (id, amount)
    SELECT 2000000 + g * 1000, -g FROM generate_series(0, 2999) AS g;
    ANALYZE public.ledger_p";

pub const PARTITIONED_EXPR: &str = "amount::bigint * 2";

/// Random writes to `ledger_p`, including key updates that move rows to another partition.
pub fn partitioned_step(rng: &mut Rng) -> String {
    let k = match rng.below(4) {
        0 => rng.int(-600, -1),
        1 => rng.int(0, 999),
        2 => rng.int(1000, 13500),
        _ => 2_000_000 + 1000 * rng.int(0, 3200),
    };
    match rng.below(100) {
        0..25 => format!(
            "INSERT INTO public.ledger_p (id, amount) VALUES ({k}, {})
             ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount",
            rng.int(-100, 100)
        ),
        25..55 => format!(
            "UPDATE public.ledger_p SET amount = amount + 1 WHERE id BETWEEN {k} AND {k} + {}",
            rng.int(0, 100)
        ),
        // Across partitions: a delete from one and an insert into another in the WAL.
        55..65 => format!(
            "UPDATE public.ledger_p SET id = {} WHERE id = {k}",
            1_000_000 + rng.int(0, 999_999)
        ),
        65..72 => format!("UPDATE public.ledger_p SET doubled = 0 WHERE id = {k}"),
        _ => format!("DELETE FROM public.ledger_p WHERE id = {k}"),
    }
}
