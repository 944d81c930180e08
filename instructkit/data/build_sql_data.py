"""Build the offline text-to-SQL default: `instructkit/data/default/sql/shop.sql`, a small shop's
SQLite database as a script (customers, products, orders, order items, with rows), and
`instructkit/data/default/sql-data.json`, questions about it with gold queries, in
sql-create-context's form (`question`, `context` = the CREATE TABLE statements of the tables the
query reads, `answer` = the SQL) plus `db_id` (the database stage 4's sql-execution runs them on)
and `category` (the kind of query: filter, count, order by, group by, join, nested, aggregate).

Run `python -m instructkit.data.build_sql_data` to regenerate both; the output is deterministic, a
test checks the committed files equal it and that every gold query runs and returns rows.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

DEFAULT = Path(__file__).parent / "default"
DATABASE = DEFAULT / "sql" / "shop.sql"
QUESTIONS = DEFAULT / "sql-data.json"
DB_ID = "shop"
SEED = 20261202

TABLES = {
    "customers": "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL, "
                 "joined_year INTEGER NOT NULL)",
    "products": "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, "
                "price REAL NOT NULL)",
    "orders": "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), "
              "order_year INTEGER NOT NULL, status TEXT NOT NULL)",
    "order_items": "CREATE TABLE order_items (order_id INTEGER NOT NULL REFERENCES orders(id), "
                   "product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL)",
}
CITIES = ["Oslo", "Lima", "Porto", "Quito", "Turin", "Dakar", "Hanoi", "Perth"]
FIRST = ["Ada", "Ben", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo",
         "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Viktor", "Wen", "Yara"]
LAST = ["Berg", "Costa", "Diaz", "Okafor", "Novak", "Rossi", "Sato", "Silva", "Tran", "Weber"]
PRODUCTS = {
    "books": ["Atlas", "Cookbook", "Dictionary", "Novel", "Poetry Collection", "Travel Guide"],
    "garden": ["Hose", "Rake", "Seed Pack", "Shovel", "Watering Can", "Wheelbarrow"],
    "kitchen": ["Blender", "Frying Pan", "Kettle", "Knife Set", "Teapot", "Toaster"],
    "toys": ["Board Game", "Kite", "Puzzle", "Robot Kit", "Teddy Bear", "Yo-yo"],
    "sports": ["Football", "Helmet", "Jump Rope", "Racket", "Tennis Balls", "Yoga Mat"],
}
YEARS = [2021, 2022, 2023, 2024]
STATUSES = ["shipped", "pending", "cancelled"]


def rows(rng: random.Random) -> dict[str, list[tuple]]:
    names = [f"{first} {last}" for first in FIRST for last in LAST]
    rng.shuffle(names)
    customers = [(i + 1, names[i], rng.choice(CITIES), rng.choice(YEARS[:3] + [2020])) for i in range(40)]
    products, pid = [], 1
    for category, items in PRODUCTS.items():
        for item in items:
            products.append((pid, item, category, round(rng.uniform(3, 120), 2)))
            pid += 1
    orders = [(i + 1, rng.randint(1, 36), rng.choice(YEARS), rng.choices(STATUSES, weights=[6, 2, 1])[0])
              for i in range(90)]
    items = []
    for order in orders:
        for product in rng.sample(range(1, len(products) + 1), rng.randint(1, 3)):
            items.append((order[0], product, rng.randint(1, 5)))
    return {"customers": customers, "products": products, "orders": orders, "order_items": items}


def script(data: dict[str, list[tuple]]) -> str:
    lines = ["-- A small shop for the offline text-to-SQL default (built by instructkit/data/build_sql_data.py)."]
    for name, create in TABLES.items():
        lines.append(create + ";")
        for row in data[name]:
            values = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in row)
            lines.append(f"INSERT INTO {name} VALUES ({values});")
    return "\n".join(lines) + "\n"


def _record(question: str, query: str, tables: list[str], kind: str) -> dict:
    return {"question": question, "context": "; ".join(TABLES[t] for t in tables), "answer": query,
            "db_id": DB_ID, "category": kind}


def questions(data: dict[str, list[tuple]]) -> list[dict]:
    """Questions of each kind, over the values the database holds."""
    out = []
    categories = list(PRODUCTS)
    product_names = [p[1] for p in data["products"]]
    customer_names = [c[1] for c in data["customers"]]
    for city in CITIES:
        out.append(_record(f"List the names of the customers who live in {city}.",
                           f"SELECT name FROM customers WHERE city = '{city}'", ["customers"], "filter"))
        out.append(_record(f"How many customers live in {city}?",
                           f"SELECT COUNT(*) FROM customers WHERE city = '{city}'", ["customers"], "count"))
        out.append(_record(f"Which customers from {city} joined before 2022?",
                           f"SELECT name FROM customers WHERE city = '{city}' AND joined_year < 2022",
                           ["customers"], "filter"))
        out.append(_record(f"How many orders were placed by customers from {city}?",
                           "SELECT COUNT(*) FROM orders JOIN customers ON orders.customer_id = customers.id "
                           f"WHERE customers.city = '{city}'", ["orders", "customers"], "join"))
    for year in YEARS:
        out.append(_record(f"How many orders were placed in {year}?",
                           f"SELECT COUNT(*) FROM orders WHERE order_year = {year}", ["orders"], "count"))
        out.append(_record(f"List the names of the customers who placed an order in {year}.",
                           "SELECT DISTINCT customers.name FROM customers JOIN orders ON orders.customer_id = "
                           f"customers.id WHERE orders.order_year = {year}", ["customers", "orders"], "join"))
        out.append(_record(f"How many customers joined in {year}?",
                           f"SELECT COUNT(*) FROM customers WHERE joined_year = {year}", ["customers"], "count"))
        for status in STATUSES:
            out.append(_record(f"How many orders from {year} are {status}?",
                               f"SELECT COUNT(*) FROM orders WHERE order_year = {year} AND status = '{status}'",
                               ["orders"], "count"))
    for category in categories:
        out.append(_record(f"List the products in the {category} category.",
                           f"SELECT name FROM products WHERE category = '{category}'", ["products"], "filter"))
        out.append(_record(f"What is the average price of the products in the {category} category?",
                           f"SELECT AVG(price) FROM products WHERE category = '{category}'", ["products"], "aggregate"))
        out.append(_record(f"What is the most expensive product in the {category} category?",
                           f"SELECT name FROM products WHERE category = '{category}' ORDER BY price DESC LIMIT 1",
                           ["products"], "order by"))
        out.append(_record(f"List the products in the {category} category from cheapest to most expensive.",
                           f"SELECT name FROM products WHERE category = '{category}' ORDER BY price ASC",
                           ["products"], "order by"))
        out.append(_record(f"How many units of {category} products were ordered in total?",
                           "SELECT SUM(order_items.quantity) FROM order_items JOIN products ON order_items.product_id "
                           f"= products.id WHERE products.category = '{category}'", ["order_items", "products"], "join"))
        out.append(_record(f"Which products in the {category} category cost more than the average product?",
                           f"SELECT name FROM products WHERE category = '{category}' AND price > "
                           "(SELECT AVG(price) FROM products)", ["products"], "nested"))
    for limit in (1, 2, 3, 5, 10):
        out.append(_record(f"List the {limit} most expensive products." if limit > 1 else "What is the most expensive product?",
                           f"SELECT name FROM products ORDER BY price DESC LIMIT {limit}", ["products"], "order by"))
        out.append(_record(f"List the {limit} cheapest products." if limit > 1 else "What is the cheapest product?",
                           f"SELECT name FROM products ORDER BY price ASC LIMIT {limit}", ["products"], "order by"))
    for threshold in (10, 20, 30, 50, 75, 100):
        out.append(_record(f"How many products cost more than {threshold} dollars?",
                           f"SELECT COUNT(*) FROM products WHERE price > {threshold}", ["products"], "count"))
        out.append(_record(f"List the products that cost less than {threshold} dollars.",
                           f"SELECT name FROM products WHERE price < {threshold}", ["products"], "filter"))
    for name in product_names:
        out.append(_record(f"What is the price of the {name}?", f"SELECT price FROM products WHERE name = '{name}'",
                           ["products"], "filter"))
        out.append(_record(f"How many times was the {name} ordered?",
                           "SELECT COUNT(*) FROM order_items JOIN products ON order_items.product_id = products.id "
                           f"WHERE products.name = '{name}'", ["order_items", "products"], "join"))
    for name in customer_names[:24]:
        out.append(_record(f"How many orders has {name} placed?",
                           "SELECT COUNT(*) FROM orders JOIN customers ON orders.customer_id = customers.id "
                           f"WHERE customers.name = '{name}'", ["orders", "customers"], "join"))
        out.append(_record(f"Which city does {name} live in?", f"SELECT city FROM customers WHERE name = '{name}'",
                           ["customers"], "filter"))
    out += [
        _record("How many customers are there in each city?",
                "SELECT city, COUNT(*) FROM customers GROUP BY city", ["customers"], "group by"),
        _record("How many orders are there for each status?",
                "SELECT status, COUNT(*) FROM orders GROUP BY status", ["orders"], "group by"),
        _record("What is the average product price in each category?",
                "SELECT category, AVG(price) FROM products GROUP BY category", ["products"], "group by"),
        _record("How many products are there in each category?",
                "SELECT category, COUNT(*) FROM products GROUP BY category", ["products"], "group by"),
        _record("How many orders were placed in each year?",
                "SELECT order_year, COUNT(*) FROM orders GROUP BY order_year", ["orders"], "group by"),
        _record("Which cities have more than five customers?",
                "SELECT city FROM customers GROUP BY city HAVING COUNT(*) > 5", ["customers"], "group by"),
        _record("Which customers have never placed an order?",
                "SELECT name FROM customers WHERE id NOT IN (SELECT customer_id FROM orders)", ["customers", "orders"],
                "nested"),
        _record("Which products have never been ordered?",
                "SELECT name FROM products WHERE id NOT IN (SELECT product_id FROM order_items)",
                ["products", "order_items"], "nested"),
        _record("How many customers are there?", "SELECT COUNT(*) FROM customers", ["customers"], "count"),
        _record("How many products are there?", "SELECT COUNT(*) FROM products", ["products"], "count"),
        _record("What is the average price of all products?", "SELECT AVG(price) FROM products", ["products"],
                "aggregate"),
        _record("What is the highest product price?", "SELECT MAX(price) FROM products", ["products"], "aggregate"),
        _record("What is the lowest product price?", "SELECT MIN(price) FROM products", ["products"], "aggregate"),
        _record("How many units were ordered in total?", "SELECT SUM(quantity) FROM order_items", ["order_items"],
                "aggregate"),
    ]
    return out


def build() -> tuple[str, list[dict]]:
    data = rows(random.Random(SEED))
    return script(data), questions(data)


def main() -> None:
    text, records = build()
    DATABASE.parent.mkdir(parents=True, exist_ok=True)
    DATABASE.write_text(text, encoding="utf-8")
    QUESTIONS.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    connection = sqlite3.connect(":memory:")
    connection.executescript(text)
    empty = [r["question"] for r in records if not connection.execute(r["answer"]).fetchall()]
    print(f"wrote {DATABASE} and {QUESTIONS} ({len(records)} questions; {len(empty)} with no rows)")


if __name__ == "__main__":
    main()
