//! The schemas and specs many tests share, in one place: `users` with `status` mirrored from
//! `is_active` (set mode) and `orders` -> `order_items`, one target row per JSON line item
//! (rows mode), with or without `qty`; and the tests' own SQL for what those targets must hold.

/// The set mode's expression: `users.status` from `is_active`.
pub const STATUS_EXPR: &str = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END";

/// The rows mode's `select`: `(order_id, line_no, sku, qty)` per line item of `orders.items`
/// (the design's rows-mode example).
pub const ITEMS_SELECT: &str =
    "SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku, (i.v->>'qty')::int AS qty
FROM jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)";

/// [`ITEMS_SELECT`] without `qty`: `(order_id, line_no, sku)` per line item.
pub const ITEMS_SKU_SELECT: &str = "SELECT src.id AS order_id, i.n AS line_no, i.v->>'sku' AS sku
FROM jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n)";

/// `users` (set mode: `status` from `is_active`) and `orders` -> `order_items`
/// (rows mode: one target row per JSON line item).
pub const SCHEMA: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, is_active boolean NOT NULL, pad text, status text);
CREATE TABLE orders (id bigint PRIMARY KEY, items jsonb NOT NULL);
CREATE TABLE order_items (order_id bigint NOT NULL, line_no bigint NOT NULL, sku text, qty int,
                          PRIMARY KEY (order_id, line_no));
";

pub const USERS_MIRROR: &str = r#"
[[mirror]]
source = "public.users"
set = { status = "CASE WHEN is_active THEN 'active' ELSE 'disabled' END" }
"#;

/// The one text of the `orders` -> `order_items` mirror (rows mode, owned by `order_id`), with
/// `select` as its mapping: [`orders_mirror`] and [`orders_sku_mirror`] are it with the shared
/// selects, and tests that need a variant (another select, a `reverse`) build it from this.
pub fn orders_mirror_with(select: &str) -> String {
    format!(
        r#"
[[mirror]]
source = "public.orders"
target = "public.order_items"
owner  = ["order_id"]
select = """
{select}
"""
"#
    )
}

/// The `orders` -> `order_items` mirror of [`SCHEMA`]: its `select` is [`ITEMS_SELECT`].
pub fn orders_mirror() -> String {
    orders_mirror_with(ITEMS_SELECT)
}

/// [`SCHEMA`] without `users.pad` and `order_items.qty`, and with nullable columns.
pub const SKU_SCHEMA: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, is_active boolean, status text);
CREATE TABLE orders (id bigint PRIMARY KEY, items jsonb NOT NULL);
CREATE TABLE order_items (order_id bigint, line_no bigint, sku text, PRIMARY KEY (order_id, line_no));
";

/// [`orders_mirror`] for [`SKU_SCHEMA`]: its `select` is [`ITEMS_SKU_SELECT`].
pub fn orders_sku_mirror() -> String {
    orders_mirror_with(ITEMS_SKU_SELECT)
}

/// Counts the `users` rows whose `status` is not the set mapping of `is_active`
/// (`CASE WHEN is_active THEN 'active' ELSE 'disabled' END`): 0 once walshift has mirrored them.
pub async fn wrong_status(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM users WHERE status IS DISTINCT FROM CASE WHEN is_active THEN 'active' ELSE 'disabled' END",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// How many rows `order_items` and the rows mapping of `orders.items` (one
/// `(order_id, line_no, sku)` row per JSON line item) differ by, compared as multisets in both
/// directions: 0 when the target is exactly the mapping.
pub async fn order_items_diff(client: &tokio_postgres::Client) -> i64 {
    items_diff(client, "i.v->>'sku' AS sku").await
}

/// [`order_items_diff`] for an `order_items` with `qty`: one `(order_id, line_no, sku, qty)` row
/// per JSON line item.
pub async fn order_items_qty_diff(client: &tokio_postgres::Client) -> i64 {
    items_diff(client, "i.v->>'sku' AS sku, (i.v->>'qty')::int AS qty").await
}

/// `order_items` against `(order_id, line_no, <columns>)` per line item of `orders.items`, as
/// multisets both ways.
async fn items_diff(client: &tokio_postgres::Client, columns: &str) -> i64 {
    let sql = format!(
        "WITH want AS (SELECT src.id AS order_id, i.n AS line_no, {columns}
                       FROM orders src, jsonb_array_elements(src.items) WITH ORDINALITY AS i(v, n))
         SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM order_items) a)
              + (SELECT count(*) FROM (SELECT * FROM order_items EXCEPT ALL SELECT * FROM want) b)"
    );
    client
        .query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
