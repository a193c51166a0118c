//! The old and new shapes of each scenario (DDL), their mappings (as spec and as comparison),
//! and random transactions against the old shape.
//!
//! Keys are drawn from small ranges on purpose: concurrent tasks keep hitting the same keys, so
//! transactions touching one key commit in every order, and batches see a key many times.

use super::compare::{RowsMirror, SetMirror};
use super::load::Rng;
use crate::support::fixtures::{ITEMS_SELECT, STATUS_EXPR};

/// Runs `one` once, or (one time in five) two or three times as one transaction.
pub fn txn(rng: &mut Rng, one: fn(&mut Rng) -> String) -> String {
    let n = if rng.chance(20) { rng.int(2, 3) } else { 1 };
    (0..n).map(|_| one(rng)).collect::<Vec<_>>().join(";\n")
}

fn one_of(rng: &mut Rng, items: &[&'static str]) -> &'static str {
    let &item = rng.pick(items);
    item
}

fn bool_or_null(rng: &mut Rng) -> &'static str {
    one_of(rng, &["true", "false", "true", "false", "NULL"])
}

// ---------------------------------------------------------------------------------------------
// users.is_active -> status (set mode)

pub const USERS_DDL: &str = "
    CREATE TABLE public.users (
        id int PRIMARY KEY,
        email text,
        is_active boolean,
        note text,
        status text)";

pub const STATUS: SetMirror<'static> = SetMirror {
    table: "public.users",
    column: "status",
    expr: STATUS_EXPR,
};

pub fn users_step(rng: &mut Rng) -> String {
    let k = rng.int(1, 200);
    match rng.below(100) {
        0..35 => format!(
            "INSERT INTO public.users (id, email, is_active) VALUES ({k}, 'u{k}@example.com', {b})
             ON CONFLICT (id) DO UPDATE SET is_active = EXCLUDED.is_active",
            b = bool_or_null(rng)
        ),
        35..60 => format!("UPDATE public.users SET is_active = NOT is_active WHERE id = {k}"),
        60..70 => format!(
            "UPDATE public.users SET is_active = {b} WHERE id BETWEEN {k} AND {k} + 5",
            b = bool_or_null(rng)
        ),
        // Not part of the mapping: a recompute of this key changes nothing.
        70..80 => format!(
            "UPDATE public.users SET email = 'v{}@example.com' WHERE id = {k}",
            rng.below(1000)
        ),
        // The application writes the new column itself; the recompute must overwrite it.
        80..85 => format!("UPDATE public.users SET status = 'bogus' WHERE id = {k}"),
        _ => format!("DELETE FROM public.users WHERE id = {k}"),
    }
}

// ---------------------------------------------------------------------------------------------
// users.id int -> id_big bigint (set mode)

pub const IDS_DDL: &str = "
    CREATE TABLE public.accounts (
        id int PRIMARY KEY,
        name text,
        id_big bigint)";

pub const ID_BIG: SetMirror<'static> = SetMirror {
    table: "public.accounts",
    column: "id_big",
    expr: "id::bigint",
};

/// Small, negative, and near `int` max: keys travel as text and are cast back.
fn account_key(rng: &mut Rng) -> i64 {
    match rng.below(3) {
        0 => rng.int(1, 60),
        1 => rng.int(-60, -1),
        _ => rng.int(i32::MAX as i64 - 60, i32::MAX as i64),
    }
}

pub fn ids_step(rng: &mut Rng) -> String {
    let k = account_key(rng);
    match rng.below(100) {
        0..40 => format!(
            "INSERT INTO public.accounts (id, name) VALUES ({k}, 'n{k}') ON CONFLICT DO NOTHING"
        ),
        // A primary-key update: the new key must get its id_big, the old one is gone.
        40..60 => format!(
            "UPDATE public.accounts SET id = {} WHERE id = {k}",
            account_key(rng)
        ),
        60..75 => format!(
            "UPDATE public.accounts SET name = 'm{}' WHERE id = {k}",
            rng.below(100)
        ),
        75..80 => format!("UPDATE public.accounts SET id_big = 0 WHERE id = {k}"),
        _ => format!("DELETE FROM public.accounts WHERE id = {k}"),
    }
}

// ---------------------------------------------------------------------------------------------
// orders.items jsonb -> order_items (rows mode)

pub const ORDERS_DDL: &str = "
    CREATE TABLE public.orders (
        id bigint PRIMARY KEY,
        customer text,
        items jsonb);
    CREATE TABLE public.order_items (
        order_id bigint NOT NULL,
        line_no bigint NOT NULL,
        sku text,
        qty int,
        PRIMARY KEY (order_id, line_no))";

pub const ORDER_ITEMS: RowsMirror<'static> = RowsMirror {
    source: "public.orders",
    select: ITEMS_SELECT,
    target: "public.order_items",
    owner: &["order_id"],
    columns: "order_id, line_no, sku, qty",
};

/// One element of an items array, with JSON nulls and missing fields now and then.
pub fn item(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => "null".to_owned(),
        1 => r#"{"sku": null, "qty": null}"#.to_owned(),
        2 => format!(r#"{{"sku": "s{}"}}"#, rng.below(50)),
        _ => format!(
            r#"{{"sku": "s{}", "qty": {}}}"#,
            rng.below(50),
            rng.int(-3, 20)
        ),
    }
}

/// An items array (0..=5 elements), or SQL NULL.
pub fn items(rng: &mut Rng) -> String {
    if rng.chance(10) {
        return "NULL".to_owned();
    }
    let n = rng.int(0, 5);
    let elems: Vec<String> = (0..n).map(|_| item(rng)).collect();
    format!("'[{}]'::jsonb", elems.join(", "))
}

pub fn orders_step(rng: &mut Rng) -> String {
    let k = rng.int(1, 150);
    match rng.below(100) {
        0..30 => format!(
            "INSERT INTO public.orders (id, customer, items) VALUES ({k}, 'c{k}', {items})
             ON CONFLICT (id) DO UPDATE SET items = EXCLUDED.items",
            items = items(rng)
        ),
        30..45 => format!(
            "UPDATE public.orders SET items = coalesce(items, '[]') || jsonb_build_array('{}'::jsonb)
             WHERE id = {k}",
            item(rng)
        ),
        // Removing an element renumbers every later line.
        45..58 => format!(
            "UPDATE public.orders SET items = items - {} WHERE id = {k}",
            rng.below(4)
        ),
        58..68 => format!(
            "UPDATE public.orders SET items = (
                 SELECT coalesce(jsonb_agg(e.v ORDER BY e.n DESC), '[]')
                 FROM jsonb_array_elements(orders.items) WITH ORDINALITY AS e(v, n))
             WHERE id = {k} AND jsonb_typeof(items) = 'array'"
        ),
        68..75 => format!(
            "UPDATE public.orders SET items = jsonb_set(items, '{{0,qty}}', '{}')
             WHERE id = {k} AND jsonb_typeof(items->0) = 'object'",
            rng.int(0, 9)
        ),
        75..85 => format!(
            "UPDATE public.orders SET customer = 'd{}' WHERE id = {k}",
            rng.below(100)
        ),
        _ => format!("DELETE FROM public.orders WHERE id = {k}"),
    }
}

// ---------------------------------------------------------------------------------------------
// users + orders in one spec: the "shop" of the example spec, for the lifecycle scenarios.

pub fn shop_ddl() -> String {
    format!("{USERS_DDL};\n{ORDERS_DDL}")
}

pub fn shop_spec() -> String {
    format!("{}{}", STATUS.spec(), ORDER_ITEMS.spec())
}

pub fn shop_step(rng: &mut Rng) -> String {
    if rng.chance(50) {
        txn(rng, users_step)
    } else {
        txn(rng, orders_step)
    }
}

// ---------------------------------------------------------------------------------------------
// events split by kind into events_a and events_b (two rows-mode mirrors, one source)

pub const EVENTS_DDL: &str = "
    CREATE TABLE public.events (id int PRIMARY KEY, kind text, payload text);
    CREATE TABLE public.events_a (id int PRIMARY KEY, payload text);
    CREATE TABLE public.events_b (id int PRIMARY KEY, payload text, kind text)";

pub const EVENTS_A: RowsMirror<'static> = RowsMirror {
    source: "public.events",
    select: "SELECT src.id, src.payload WHERE src.kind = 'a'",
    target: "public.events_a",
    owner: &["id"],
    columns: "id, payload",
};

pub const EVENTS_B: RowsMirror<'static> = RowsMirror {
    source: "public.events",
    select: "SELECT src.id, src.payload, src.kind\nWHERE src.kind = 'b' -- a comment ends the select",
    target: "public.events_b",
    owner: &["id"],
    columns: "id, payload, kind",
};

fn kind(rng: &mut Rng) -> &'static str {
    one_of(rng, &["'a'", "'b'", "'a'", "'b'", "'c'", "NULL"])
}

pub fn events_step(rng: &mut Rng) -> String {
    let k = rng.int(1, 200);
    match rng.below(100) {
        0..30 => format!(
            "INSERT INTO public.events VALUES ({k}, {}, 'p{}') ON CONFLICT (id) DO NOTHING",
            kind(rng),
            rng.below(100)
        ),
        // The row moves from one target to the other (or out of both).
        30..55 => format!(
            "UPDATE public.events SET kind = {} WHERE id = {k}",
            kind(rng)
        ),
        55..65 => format!(
            "UPDATE public.events
             SET kind = CASE kind WHEN 'a' THEN 'b' WHEN 'b' THEN 'a' ELSE kind END
             WHERE id BETWEEN {k} AND {k} + 10"
        ),
        65..80 => {
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

// ---------------------------------------------------------------------------------------------
// profiles.tags merged with legacy_tags: a mapping that reads its own output

pub const TAGS_DDL: &str = "
    CREATE TABLE public.profiles (id int PRIMARY KEY, tags text[], legacy_tags text[])";

pub const TAGS: SetMirror<'static> = SetMirror {
    table: "public.profiles",
    column: "tags",
    expr: "ARRAY(SELECT DISTINCT x FROM unnest(src.tags || src.legacy_tags) AS x ORDER BY x)",
};

/// A text[] literal with duplicates and NULL elements now and then, or SQL NULL.
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

pub fn tags_step(rng: &mut Rng) -> String {
    let k = rng.int(1, 150);
    match rng.below(100) {
        0..30 => format!(
            "INSERT INTO public.profiles VALUES ({k}, {}, {}) ON CONFLICT (id) DO NOTHING",
            tag_array(rng),
            tag_array(rng)
        ),
        // The application keeps appending to the column the mapping rewrites.
        30..50 => format!(
            "UPDATE public.profiles SET tags = array_append(tags, 't{}') WHERE id = {k}",
            rng.below(10)
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
// Quoted names in a non-public schema, NULLs, primary-key updates (rows mode), TRUNCATE

pub const QUOTED_DDL: &str = r#"
    CREATE SCHEMA "My Schema";
    CREATE TABLE "My Schema"."Orders" (
        "Order Id" int PRIMARY KEY,
        "Customer Name" text,
        "Items" jsonb,
        "Item Count" int);
    CREATE TABLE "My Schema"."Order Items" (
        "Order Id" int NOT NULL,
        "Line No" bigint NOT NULL,
        "SKU" text,
        "Qty" int,
        "Customer Name" text,
        PRIMARY KEY ("Order Id", "Line No"))"#;

pub const QUOTED_COUNT: SetMirror<'static> = SetMirror {
    table: r#""My Schema"."Orders""#,
    column: r#""Item Count""#,
    expr: r#"jsonb_array_length(src."Items")"#,
};

pub const QUOTED_ITEMS: RowsMirror<'static> = RowsMirror {
    source: r#""My Schema"."Orders""#,
    select: r#"SELECT src."Order Id", i.n AS "Line No", i.v->>'sku' AS "SKU",
       (i.v->>'qty')::int AS "Qty", src."Customer Name"
FROM jsonb_array_elements(src."Items") WITH ORDINALITY AS i(v, n)"#,
    target: r#""My Schema"."Order Items""#,
    owner: &[r#""Order Id""#],
    columns: r#""Order Id", "Line No", "SKU", "Qty", "Customer Name""#,
};

/// Keys 1..=120, and the same plus a million after a primary-key update.
pub const MOVED: i64 = 1_000_000;

pub fn quoted_step(rng: &mut Rng) -> String {
    let k = rng.int(1, 120);
    let name = if rng.chance(30) {
        "NULL".to_owned()
    } else {
        format!("'Name {}'", rng.below(20))
    };
    match rng.below(100) {
        0..30 => format!(
            r#"INSERT INTO "My Schema"."Orders" ("Order Id", "Customer Name", "Items")
               VALUES ({k}, {name}, {items})
               ON CONFLICT ("Order Id") DO UPDATE SET "Items" = EXCLUDED."Items""#,
            items = items(rng)
        ),
        // Primary-key updates, both ways: the target rows change owner.
        30..42 => format!(
            r#"UPDATE "My Schema"."Orders" SET "Order Id" = "Order Id" + {MOVED} WHERE "Order Id" = {k}"#
        ),
        42..50 => format!(
            r#"UPDATE "My Schema"."Orders" SET "Order Id" = "Order Id" - {MOVED} WHERE "Order Id" = {}"#,
            k + MOVED
        ),
        50..62 => format!(
            r#"UPDATE "My Schema"."Orders" SET "Customer Name" = {name} WHERE "Order Id" IN ({k}, {})"#,
            k + MOVED
        ),
        62..75 => format!(
            r#"UPDATE "My Schema"."Orders"
               SET "Items" = coalesce("Items", '[]') || jsonb_build_array('{}'::jsonb)
               WHERE "Order Id" IN ({k}, {})"#,
            item(rng),
            k + MOVED
        ),
        75..85 => format!(
            r#"UPDATE "My Schema"."Orders" SET "Items" = "Items" - 0 WHERE "Order Id" IN ({k}, {})"#,
            k + MOVED
        ),
        _ => format!(
            r#"DELETE FROM "My Schema"."Orders" WHERE "Order Id" IN ({k}, {})"#,
            k + MOVED
        ),
    }
}
