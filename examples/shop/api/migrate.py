"""Create the shop's database (idempotent), like a real migration step."""

import os
import sqlite3

db = os.environ.get("SHOP_DB", "shop.db")
with sqlite3.connect(db) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    if conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0:
        conn.executemany(
            "INSERT INTO items (name, price) VALUES (?, ?)",
            [("lasso", 19.5), ("saddle", 240.0), ("boots", 89.0)],
        )
print(f"migrated {db}")
