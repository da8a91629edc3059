"""Writes the json suite's 40 prompts (src/tokentree/bench/data/json_suite.jsonl):
``python benchmarks/make_json_suite.py src/tokentree/bench/data/json_suite.jsonl``."""
# ruff: noqa: E501  (prompt texts)

import json
import sys


def S(props, req=None):
    return {
        "type": "object",
        "properties": props,
        "required": req or list(props),
        "additionalProperties": False,
    }


def ARR(item):
    return {"type": "array", "items": item}


def ENUM(*values):
    return {"type": "string", "enum": list(values)}


STR, INT, NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
BOOL = {"type": "boolean"}

extraction = [
    (
        "person",
        "Ada Lovelace was born in London in 1815. She worked with Charles Babbage on the Analytical Engine and is often called the first computer programmer. She died at 36.",
        S({"name": STR, "birth_year": INT, "city": STR, "age_at_death": INT, "known_for": STR}),
    ),
    (
        "order",
        "Hi, this is Maria Gonzalez. I ordered two blue ceramic mugs and one teapot (order #A-48213) on March 3rd, but the teapot arrived cracked. I'd like a replacement, not a refund. You can reach me at maria.g@example.org.",
        S(
            {
                "order_id": STR,
                "customer": STR,
                "email": STR,
                "items": ARR(S({"product": STR, "quantity": INT})),
                "problem": STR,
                "wants": ENUM("refund", "replacement", "other"),
            }
        ),
    ),
    (
        "meeting",
        "Let's meet on Thursday, June 12 at 3:30 pm in room B-204 to review the Q2 budget. Priya, Tom and Lena should attend; Tom will bring the spending report.",
        S({"date": STR, "time": STR, "room": STR, "topic": STR, "attendees": ARR(STR)}),
    ),
    (
        "recipe",
        "To make pancakes, whisk 200 g flour, 2 eggs, 300 ml milk and a pinch of salt. Rest the batter for 20 minutes, then fry ladlefuls in a hot buttered pan for about 2 minutes a side. Serves 4.",
        S(
            {
                "dish": STR,
                "servings": INT,
                "ingredients": ARR(S({"name": STR, "amount": STR})),
                "total_minutes": INT,
            }
        ),
    ),
    (
        "job",
        "Acme Robotics is hiring a Senior Embedded Engineer in Munich (hybrid, 3 days in the office). Requirements: 5+ years of C/C++, experience with ARM Cortex-M and RTOS. Salary range EUR 75,000-90,000.",
        S(
            {
                "company": STR,
                "title": STR,
                "location": STR,
                "remote_policy": ENUM("onsite", "hybrid", "remote"),
                "min_years": INT,
                "skills": ARR(STR),
                "salary_min": INT,
                "salary_max": INT,
            }
        ),
    ),
    (
        "paper",
        "In 'Attention Is All You Need' (NeurIPS 2017), Vaswani, Shazeer, Parmar and colleagues at Google introduced the Transformer, an architecture based solely on attention mechanisms, which reached 28.4 BLEU on WMT 2014 English-to-German.",
        S(
            {
                "title": STR,
                "venue": STR,
                "year": INT,
                "first_author": STR,
                "organization": STR,
                "bleu": NUM,
            }
        ),
    ),
    (
        "bug",
        "After upgrading to version 2.4.1 the app crashes on startup on Android 14 devices with a NullPointerException in SettingsActivity. It works on Android 13. This blocks all our Pixel 8 users, so it is critical.",
        S(
            {
                "version": STR,
                "platform": STR,
                "os_version": STR,
                "exception": STR,
                "component": STR,
                "severity": ENUM("low", "medium", "high", "critical"),
                "workaround_known": BOOL,
            }
        ),
    ),
    (
        "flight",
        "Your flight LH 431 from Frankfurt (FRA) to Chicago (ORD) departs on 14 September at 10:05 and arrives at 12:20 local time. Seat 32C, economy, one checked bag included.",
        S(
            {
                "flight": STR,
                "from": STR,
                "to": STR,
                "date": STR,
                "departure": STR,
                "arrival": STR,
                "seat": STR,
                "cabin": ENUM("economy", "premium", "business", "first"),
                "checked_bags": INT,
            }
        ),
    ),
    (
        "product",
        "The Nordlys X2 desk lamp has an adjustable arm, three colour temperatures (2700 K, 4000 K, 6500 K), a USB-C charging port and costs $49.99. It weighs 1.2 kg and comes with a two-year warranty.",
        S(
            {
                "name": STR,
                "price_usd": NUM,
                "weight_kg": NUM,
                "features": ARR(STR),
                "warranty_years": INT,
            }
        ),
    ),
    (
        "invoice",
        "Invoice 2024-117 from Brightside Design to Harbor Cafe: logo design 800.00, menu layout 350.00, VAT 20%. Total due 1380.00 by 30 April 2024.",
        S(
            {
                "invoice_number": STR,
                "seller": STR,
                "buyer": STR,
                "lines": ARR(S({"description": STR, "amount": NUM})),
                "vat_percent": INT,
                "total": NUM,
                "due": STR,
            }
        ),
    ),
    (
        "review",
        "I stayed three nights at the Hotel Miramar. The sea view was stunning and the breakfast generous, but the room was noisy at night and the wifi kept dropping. I'd give it 3 out of 5.",
        S({"hotel": STR, "nights": INT, "rating": INT, "pros": ARR(STR), "cons": ARR(STR)}),
    ),
    (
        "event",
        "The Riverside Jazz Festival returns on 19-21 July at Lakeshore Park. Tickets cost 45 dollars per day or 110 for a three-day pass; children under 12 get in free. Headliners include the Marcus Reed Quartet.",
        S(
            {
                "name": STR,
                "venue": STR,
                "start": STR,
                "end": STR,
                "day_ticket": INT,
                "pass_ticket": INT,
                "free_under_age": INT,
                "headliner": STR,
            }
        ),
    ),
]
arguments = [
    (
        "resize",
        "I need to call resize_image(path, width, height, keep_aspect). Give the arguments that shrink photos/cat.png to 800 pixels wide and 600 high while keeping its aspect ratio.",
        S({"path": STR, "width": INT, "height": INT, "keep_aspect": BOOL}),
    ),
    (
        "query",
        "Fill in the arguments of search_products(query, max_price, category, in_stock_only, sort) for: wireless headphones under 150 euros in electronics, only items in stock, cheapest first.",
        S(
            {
                "query": STR,
                "max_price": NUM,
                "category": STR,
                "in_stock_only": BOOL,
                "sort": ENUM("relevance", "price_asc", "price_desc", "rating"),
            }
        ),
    ),
    (
        "schedule",
        "Arguments for schedule_job(name, cron, command, retries, notify): run the nightly backup script /opt/backup.sh every day at 2:30 am, retry 3 times, notify ops@example.com.",
        S({"name": STR, "cron": STR, "command": STR, "retries": INT, "notify": ARR(STR)}),
    ),
    (
        "transfer",
        "Produce the arguments of transfer_money(from_account, to_account, amount, currency, reference) to move 250.75 euros from account DE44 5001 0517 5407 3249 31 to FR76 3000 6000 0112 3456 7890 189 for the rent of May.",
        S(
            {
                "from_account": STR,
                "to_account": STR,
                "amount": NUM,
                "currency": STR,
                "reference": STR,
            }
        ),
    ),
    (
        "deploy",
        "Give the arguments for deploy(service, version, environment, replicas, canary) to roll out version 3.2.0 of the checkout service to production on 6 replicas as a canary.",
        S(
            {
                "service": STR,
                "version": STR,
                "environment": ENUM("dev", "staging", "production"),
                "replicas": INT,
                "canary": BOOL,
            }
        ),
    ),
    (
        "plot",
        "Arguments for plot_series(title, x_label, y_label, series, log_scale): a chart titled Monthly Revenue with months on the x axis and revenue in kEUR on the y axis, series 2023 and 2024, linear scale.",
        S({"title": STR, "x_label": STR, "y_label": STR, "series": ARR(STR), "log_scale": BOOL}),
    ),
    (
        "sql",
        "Fill in run_query(table, columns, where, order_by, limit) to fetch the name and email of the 10 most recent customers from Canada in the customers table.",
        S({"table": STR, "columns": ARR(STR), "where": STR, "order_by": STR, "limit": INT}),
    ),
    (
        "ticket",
        "Arguments for create_ticket(title, description, priority, labels, assignee): the login page shows a blank screen in Safari 17; high priority; labels frontend and safari; assign it to jkim.",
        S(
            {
                "title": STR,
                "description": STR,
                "priority": ENUM("low", "normal", "high", "urgent"),
                "labels": ARR(STR),
                "assignee": STR,
            }
        ),
    ),
]


def fn(name, description, props, req=None):
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": S(props, req)},
    }


TOOLS = {
    "get_weather": fn(
        "get_weather",
        "Current weather for a city.",
        {"city": STR, "unit": ENUM("celsius", "fahrenheit")},
    ),
    "search_web": fn(
        "search_web",
        "Search the web and return the top results.",
        {"query": STR, "max_results": INT},
    ),
    "send_email": fn("send_email", "Send an email.", {"to": STR, "subject": STR, "body": STR}),
    "create_event": fn(
        "create_event",
        "Create a calendar event.",
        {"title": STR, "date": STR, "start_time": STR, "duration_minutes": INT},
    ),
    "convert_currency": fn(
        "convert_currency",
        "Convert an amount between currencies.",
        {"amount": NUM, "from_currency": STR, "to_currency": STR},
    ),
    "get_stock_price": fn("get_stock_price", "Latest price of a stock ticker.", {"ticker": STR}),
    "set_reminder": fn("set_reminder", "Set a reminder.", {"text": STR, "when": STR}),
    "translate": fn(
        "translate", "Translate text into another language.", {"text": STR, "target_language": STR}
    ),
    "read_file": fn("read_file", "Read a file of the project.", {"path": STR}),
    "write_file": fn("write_file", "Write a file of the project.", {"path": STR, "content": STR}),
    "run_tests": fn(
        "run_tests",
        "Run the project's tests matching a pattern.",
        {"pattern": STR, "verbose": BOOL},
    ),
    "book_table": fn(
        "book_table",
        "Book a restaurant table.",
        {"restaurant": STR, "date": STR, "time": STR, "people": INT},
    ),
}
turns = [
    (
        "weather",
        "What's the weather like in Lisbon right now, in celsius?",
        ["get_weather", "search_web", "set_reminder"],
    ),
    (
        "weather-f",
        "Is it cold in Toronto at the moment? Give me fahrenheit.",
        ["get_weather", "convert_currency", "translate"],
    ),
    (
        "search",
        "Find me the three best reviewed Python books about concurrency.",
        ["search_web", "send_email", "read_file"],
    ),
    (
        "email",
        "Email bob@example.com that the release is postponed to Friday, subject 'Release date'.",
        ["send_email", "create_event", "set_reminder"],
    ),
    (
        "event",
        "Put a 45 minute 'Design review' on my calendar for 2025-03-18 at 14:00.",
        ["create_event", "set_reminder", "send_email"],
    ),
    (
        "currency",
        "How much is 1200 US dollars in Japanese yen?",
        ["convert_currency", "get_stock_price", "search_web"],
    ),
    ("stock", "What is NVIDIA trading at?", ["get_stock_price", "search_web", "convert_currency"]),
    (
        "reminder",
        "Remind me to water the plants tomorrow at 8 am.",
        ["set_reminder", "create_event", "send_email"],
    ),
    (
        "translate",
        "Translate 'Where is the train station?' into German.",
        ["translate", "search_web", "get_weather"],
    ),
    ("read", "Show me what is in src/config.yaml.", ["read_file", "write_file", "run_tests"]),
    (
        "write",
        "Create a file notes/todo.md containing the line '- fix the login bug'.",
        ["write_file", "read_file", "run_tests"],
    ),
    (
        "tests",
        "Run the tests in test_parser, verbosely please.",
        ["run_tests", "read_file", "write_file"],
    ),
    (
        "book",
        "Book a table for four at Chez Marie on 2025-05-02 at 19:30.",
        ["book_table", "create_event", "send_email"],
    ),
    (
        "search-news",
        "Search for the latest news about the James Webb telescope, 5 results.",
        ["search_web", "get_weather", "translate"],
    ),
    (
        "email-2",
        "Write to alice@example.org with subject 'Invoice 117' and tell her the invoice was paid today.",
        ["send_email", "convert_currency", "set_reminder"],
    ),
    (
        "currency-2",
        "Convert 85.50 euros to British pounds.",
        ["convert_currency", "get_stock_price", "translate"],
    ),
    (
        "weather-2",
        "Should I take an umbrella in Bergen today? Use celsius.",
        ["get_weather", "set_reminder", "search_web"],
    ),
    (
        "event-2",
        "Schedule a one hour team lunch on 2025-06-06 starting at 12:00.",
        ["create_event", "book_table", "send_email"],
    ),
    (
        "translate-2",
        "How do you say 'thank you for your patience' in Japanese?",
        ["translate", "search_web", "send_email"],
    ),
    (
        "stock-2",
        "Check the current price of the ticker MSFT for me.",
        ["get_stock_price", "convert_currency", "get_weather"],
    ),
]

EXTRACT = "Extract the information from the text below as a JSON object following this schema:\n{schema}\n\nText: {text}\n\nReply with the JSON object only."
ARGS = "{text}\n\nReply with a JSON object of the arguments only, following this schema:\n{schema}"
rows = []
for name, text, schema in extraction:
    rows.append(
        {
            "question_id": f"extract/{name}",
            "category": "extraction",
            "turns": [EXTRACT.format(schema=json.dumps(schema), text=text)],
            "schema": schema,
        }
    )
for name, text, schema in arguments:
    rows.append(
        {
            "question_id": f"args/{name}",
            "category": "arguments",
            "turns": [ARGS.format(schema=json.dumps(schema), text=text)],
            "schema": schema,
        }
    )
for name, text, tools in turns:
    rows.append(
        {
            "question_id": f"tool/{name}",
            "category": "tool-call",
            "turns": [text],
            "tools": [TOOLS[t] for t in tools],
        }
    )
assert len(rows) == 40
with open(sys.argv[1], "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
