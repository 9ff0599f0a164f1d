"""Entity-annotated text for token classification: generated demo data and readers for users' files.

Every source becomes a list of `SpanExample`: the text, and its entities as character spans
``(start, end, label)`` with ``end`` exclusive, sorted and non-overlapping. Offsets count Python
``str`` characters (Unicode code points), so ``text[start:end]`` is the entity.

Sources (`load_span_examples`):

* ``generated:entities`` - customer-service messages (payments, transfers, refunds, travel,
  appointments, utilities, deliveries, telecoms, insurance, complaints) filled from templates,
  tagged PERSON, ORG, LOCATION, DATE and MONEY; about 10% mention no entity. A title (Mr, Dr...)
  is outside a PERSON span, "the" is outside a country ("the UK"), and a preposition is outside a
  date, but a date's own "the", "next" or "last" is inside: in "on the 5th" the DATE is "the 5th".
  Numbers that are neither money nor dates (order and phone numbers, quantities, times,
  percentages) and product or plan names are left untagged. Generation is deterministic: one
  ``random.Random(seed)`` draws everything in a fixed order, so the same seed and count give the
  same list.
* a ``.jsonl`` file - one object per line, offsets as above::

      {"text": "Send $250 to Maria Lopez", "entities": [{"start": 5, "end": 9, "label": "MONEY"}, {"start": 13, "end": 24, "label": "PERSON"}]}
      {"text": "my app keeps crashing", "entities": []}
      {"text": "Flights from Lagos to Paris?", "entities": [{"start": 13, "end": 18, "label": "LOCATION"}, {"start": 22, "end": 27, "label": "LOCATION"}]}

* any other file (``.conll``, ``.txt``, ``.tsv``) - CoNLL: one token per line, its tag in the last
  column (whitespace- or tab-separated; middle columns are ignored), a blank line between
  sentences, ``-DOCSTART-`` lines skipped::

      Maria B-PERSON
      Lopez I-PERSON
      paid O

  Tags are BIO (``B-X``, ``I-X``, ``O``); an ``I-X`` that does not continue an X entity starts one,
  so IOB1 files read correctly too. A sentence's text is its tokens joined by single spaces.

Labels outside ENTITY_TYPES are kept as given. Errors in a file name the file and line.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.index import jsonl_objects

ENTITY_TYPES = ("PERSON", "ORG", "LOCATION", "DATE", "MONEY")


@dataclass
class SpanExample:
    text: str
    spans: list[tuple[int, int, str]]


# ---------------------------------------------------------------- fillers

FIRST_NAMES = (
    # English
    "James",
    "Emily",
    "Oliver",
    "Charlotte",
    "Thomas",
    "Sarah",
    "Daniel",
    "Hannah",
    "Michael",
    "Jessica",
    "Ryan",
    "Laura",
    "Kevin",
    "Rachel",
    "Siobhan",
    "Liam",
    # Spanish, Portuguese
    "Maria",
    "José",
    "Carlos",
    "Lucia",
    "Alejandro",
    "Sofia",
    "Diego",
    "Carmen",
    "Javier",
    "Valentina",
    "João",
    # Arabic
    "Ahmed",
    "Fatima",
    "Omar",
    "Layla",
    "Yusuf",
    "Aisha",
    "Khalid",
    "Mariam",
    "Hassan",
    "Noor",
    # Chinese
    "Wei",
    "Mei",
    "Hao",
    "Ling",
    "Xiu",
    "Zhen",
    "Yifan",
    "Jing",
    # Indian
    "Priya",
    "Rahul",
    "Ananya",
    "Arjun",
    "Deepika",
    "Vikram",
    "Sneha",
    "Rohan",
    "Kavya",
    "Aditya",
    # Nigerian, Ghanaian
    "Chinedu",
    "Ngozi",
    "Emeka",
    "Adaeze",
    "Tunde",
    "Folake",
    "Oluwaseun",
    "Chiamaka",
    "Ifeanyi",
    "Kwame",
    # Japanese
    "Haruto",
    "Yuki",
    "Sakura",
    "Kenji",
    "Aiko",
    "Takeshi",
    "Hina",
    # Slavic
    "Dmitri",
    "Olga",
    "Ivan",
    "Katarzyna",
    "Piotr",
    "Natalia",
    "Aleksandra",
    "Tomasz",
    "Svetlana",
    # French
    "Camille",
    "Antoine",
    "Élodie",
    "Julien",
    "Margaux",
    "Étienne",
    "Chloé",
    "Mathieu",
    # German, Nordic
    "Lukas",
    "Anna",
    "Jonas",
    "Lena",
    "Felix",
    "Greta",
    "Matthias",
    "Katrin",
    "Ingrid",
    # Vietnamese
    "Minh",
    "Linh",
    "Tuan",
    "Huong",
    "Thao",
    "Duc",
    "Quang",
)

LAST_NAMES = (
    # English, Irish
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Taylor",
    "Wilson",
    "Davies",
    "Evans",
    "Clarke",
    "Thompson",
    "Walker",
    "Harris",
    "O'Brien",
    "Murphy",
    # Spanish, Portuguese
    "Lopez",
    "García",
    "Martinez",
    "Rodriguez",
    "Hernández",
    "Gonzalez",
    "Morales",
    "Fernández",
    "Ortiz",
    "Ramirez",
    "de la Cruz",
    "Silva",
    # Arabic
    "Al-Sayed",
    "Haddad",
    "Mansour",
    "Nasser",
    "Rahman",
    "Aziz",
    "Farouk",
    "Hamdan",
    "Saleh",
    "Khan",
    # Chinese
    "Wang",
    "Zhang",
    "Chen",
    "Liu",
    "Huang",
    "Zhao",
    "Wu",
    "Xu",
    "Lin",
    "Zhou",
    # Indian
    "Patel",
    "Sharma",
    "Gupta",
    "Iyer",
    "Reddy",
    "Nair",
    "Mehta",
    "Singh",
    "Kapoor",
    "Banerjee",
    # Nigerian
    "Okafor",
    "Adeyemi",
    "Okonkwo",
    "Balogun",
    "Eze",
    "Nwosu",
    "Adebayo",
    "Obi",
    "Ogunleye",
    "Chukwu",
    # Japanese
    "Tanaka",
    "Suzuki",
    "Takahashi",
    "Watanabe",
    "Yamamoto",
    "Nakamura",
    "Kobayashi",
    "Sato",
    # Slavic
    "Ivanov",
    "Kowalski",
    "Novak",
    "Petrova",
    "Horvat",
    "Sokolov",
    "Wiśniewska",
    "Dvořák",
    "Kuznetsova",
    # French
    "Dubois",
    "Moreau",
    "Laurent",
    "Lefèvre",
    "Girard",
    "Bernard",
    "Fontaine",
    "Rousseau",
    # German, Dutch
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Becker",
    "Hoffmann",
    "Richter",
    "van Dijk",
    # Vietnamese
    "Nguyen",
    "Tran",
    "Le",
    "Pham",
    "Hoang",
    "Phan",
    "Vu",
    "Dang",
)

TITLES = ("Mr", "Mr.", "Mrs", "Ms", "Ms.", "Dr", "Dr.", "Miss", "Prof.")

BANKS = (
    "Bank of America",
    "Chase",
    "Wells Fargo",
    "Barclays",
    "HSBC",
    "Lloyds Bank",
    "Santander",
    "Citibank",
    "Monzo",
    "Revolut",
    "NatWest",
    "Deutsche Bank",
    "BNP Paribas",
    "ING",
    "Capital One",
    "PayPal",
    "Scotiabank",
    "ICICI Bank",
    "Standard Chartered",
    "Commonwealth Bank",
)
SHOPS = (
    "Amazon",
    "Walmart",
    "Tesco",
    "IKEA",
    "Best Buy",
    "Zara",
    "Sainsbury's",
    "Carrefour",
    "Costco",
    "eBay",
    "Argos",
    "Marks & Spencer",
    "Home Depot",
    "Etsy",
    "Zalando",
    "Decathlon",
    "MediaMarkt",
    "Aldi",
    "H&M",
)
UTILITIES = (
    "Pacific Gas and Electric",
    "British Gas",
    "EDF Energy",
    "Con Edison",
    "Thames Water",
    "Octopus Energy",
    "Duke Energy",
    "E.ON",
    "Iberdrola",
    "Severn Trent",
)
AIRLINES = (
    "British Airways",
    "Lufthansa",
    "Emirates",
    "Delta Air Lines",
    "Ryanair",
    "easyJet",
    "Air France",
    "Qatar Airways",
    "United Airlines",
    "KLM",
    "Singapore Airlines",
    "Turkish Airlines",
    "Virgin Atlantic",
    "Aer Lingus",
)
TELECOMS = (
    "Vodafone",
    "Verizon",
    "AT&T",
    "T-Mobile",
    "Orange",
    "BT",
    "Comcast",
    "O2",
    "Telstra",
    "Airtel",
    "Deutsche Telekom",
    "Sky",
)
COURIERS = ("FedEx", "DHL", "UPS", "Royal Mail", "Evri", "DPD", "USPS", "Deliveroo", "Uber Eats", "GLS")
INSURERS = (
    "Allianz",
    "AXA",
    "Aviva",
    "State Farm",
    "Geico",
    "MetLife",
    "Prudential",
    "Liberty Mutual",
    "Allstate",
    "Aetna",
    "Direct Line",
)
SERVICES = (
    "Netflix",
    "Spotify",
    "Uber",
    "Airbnb",
    "Booking.com",
    "Expedia",
    "Disney+",
    "Microsoft",
    "Google",
)
ORGS = BANKS + SHOPS + UTILITIES + AIRLINES + TELECOMS + COURIERS + INSURERS + SERVICES

CITIES = (
    "New York",
    "San Francisco",
    "Los Angeles",
    "Chicago",
    "Boston",
    "Seattle",
    "Miami",
    "Houston",
    "Atlanta",
    "Denver",
    "Toronto",
    "Vancouver",
    "Montreal",
    "Mexico City",
    "London",
    "Manchester",
    "Edinburgh",
    "Glasgow",
    "Dublin",
    "Paris",
    "Lyon",
    "Berlin",
    "Munich",
    "Frankfurt",
    "Hamburg",
    "Madrid",
    "Barcelona",
    "Lisbon",
    "Rome",
    "Milan",
    "Amsterdam",
    "Brussels",
    "Vienna",
    "Prague",
    "Warsaw",
    "Krakow",
    "Zurich",
    "Geneva",
    "Stockholm",
    "Oslo",
    "Copenhagen",
    "Helsinki",
    "Athens",
    "Istanbul",
    "Dubai",
    "Abu Dhabi",
    "Riyadh",
    "Doha",
    "Cairo",
    "Lagos",
    "Abuja",
    "Accra",
    "Nairobi",
    "Johannesburg",
    "Cape Town",
    "Mumbai",
    "New Delhi",
    "Bangalore",
    "Karachi",
    "Dhaka",
    "Beijing",
    "Shanghai",
    "Hong Kong",
    "Tokyo",
    "Osaka",
    "Seoul",
    "Singapore",
    "Bangkok",
    "Hanoi",
    "Ho Chi Minh City",
    "Jakarta",
    "Manila",
    "Kuala Lumpur",
    "Sydney",
    "Melbourne",
    "Auckland",
    "Rio de Janeiro",
    "São Paulo",
    "Buenos Aires",
    "Lima",
    "Bogotá",
    "Santiago",
)
COUNTRIES = (
    "United Kingdom",
    "United States",
    "Canada",
    "Mexico",
    "France",
    "Germany",
    "Spain",
    "Portugal",
    "Italy",
    "Ireland",
    "Netherlands",
    "Belgium",
    "Switzerland",
    "Sweden",
    "Norway",
    "Poland",
    "Greece",
    "Turkey",
    "Egypt",
    "Morocco",
    "Nigeria",
    "Ghana",
    "Kenya",
    "South Africa",
    "United Arab Emirates",
    "Saudi Arabia",
    "India",
    "Pakistan",
    "Bangladesh",
    "China",
    "Japan",
    "South Korea",
    "Thailand",
    "Vietnam",
    "Indonesia",
    "Philippines",
    "Malaysia",
    "Australia",
    "New Zealand",
    "Brazil",
    "Argentina",
    "Peru",
    "Colombia",
    "Chile",
    "UK",
    "US",
    "USA",
)
THE_COUNTRIES = {
    "UK",
    "US",
    "USA",
    "United Kingdom",
    "United States",
    "United Arab Emirates",
    "Netherlands",
    "Philippines",
}

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
MONTH_ABBREVIATIONS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sept", "Oct", "Nov", "Dec")
MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NUMBER_WORDS = ("two", "three", "four", "five", "six", "ten")
PAST_PHRASES = ("yesterday", "today", "last week", "last month", "the day before yesterday")
NEXT_PHRASES = ("tomorrow", "today", "next week", "next month", "the day after tomorrow", "this weekend")

PRODUCTS = (
    "iPhone 14",
    "Galaxy S23",
    "AirPods",
    "Kindle",
    "PlayStation 5",
    "MacBook Air",
    "Pixel 8",
    "smartwatch",
    "games console",
    "washing machine",
    "sofa",
    "laptop",
    "coffee machine",
    "router",
    "TV",
    "mattress",
)
PLANS = ("Premium", "Unlimited Plus", "Family", "Gold", "Business Class", "Economy Plus", "Student", "Basic")

Filled = tuple[str, str]  # (untagged text before the value, the value)


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _person(rng: random.Random) -> Filled:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    r = rng.random()
    if r < 0.25:
        return "", first
    if r < 0.75:
        return "", f"{first} {last}"
    title = rng.choice(TITLES) + " "
    return (title, last) if r < 0.9 else (title, f"{first} {last}")


def _calendar_date(rng: random.Random) -> str:
    """An absolute date in one of fifteen written forms."""
    month = rng.randrange(12)
    day = rng.randint(1, MONTH_DAYS[month])
    year = rng.randint(2023, 2026)
    name, short = MONTHS[month], MONTH_ABBREVIATIONS[month]
    forms = (
        f"{name} {_ordinal(day)}",
        f"{name} {day}",
        f"{day} {name}",
        f"{_ordinal(day)} {name}",
        f"the {_ordinal(day)} of {name}",
        f"{_ordinal(day)} of {name}",
        f"{name} {day}, {year}",
        f"{day} {name} {year}",
        f"{short} {day}",
        f"{day} {short}",
        f"{day:02d}/{month + 1:02d}/{year}",
        f"{month + 1}/{day}/{year % 100:02d}",
        f"{year}-{month + 1:02d}-{day:02d}",
        f"the {_ordinal(day)}",
        rng.choice(WEEKDAYS),
    )
    return rng.choice(forms)


def _relative_date(rng: random.Random, phrases: Sequence[str], weekday_words: tuple[str, ...]) -> str:
    """A fixed phrase (20%), "<word> <weekday>" (15%) or a calendar date."""
    r = rng.random()
    if r < 0.2:
        return rng.choice(phrases)
    if r < 0.35:
        word = weekday_words[0] if len(weekday_words) == 1 else rng.choice(weekday_words)
        return f"{word} {rng.choice(WEEKDAYS)}"
    return _calendar_date(rng)


def _past_date(rng: random.Random) -> str:
    return _relative_date(rng, PAST_PHRASES, ("last",))


def _next_date(rng: random.Random) -> str:
    return _relative_date(rng, NEXT_PHRASES, ("next", "this"))


def _on(date: str) -> Filled:
    """A date used as an adverbial: calendar dates take "on", relative ones ("tomorrow") stand alone."""
    relative = date.split()[0] in (
        "yesterday",
        "today",
        "tomorrow",
        "last",
        "next",
        "this",
    ) or date.startswith("the day ")
    return ("" if relative else "on ", date)


def _when_past(rng: random.Random) -> Filled:
    if rng.random() < 0.1:
        return "", f"{rng.choice(NUMBER_WORDS + ('3', '5'))} {rng.choice(('days', 'weeks'))} ago"
    return _on(_past_date(rng))


def _country(rng: random.Random) -> Filled:
    """A country; "the" before "UK" or "Netherlands" is outside the span."""
    country = rng.choice(COUNTRIES)
    return ("the " if country in THE_COUNTRIES else "", country)


def _location(rng: random.Random) -> Filled:
    return _country(rng) if rng.random() < 0.4 else ("", rng.choice(CITIES))


def _amount(rng: random.Random, cents: bool) -> str:
    r = rng.random()
    value = (
        rng.randint(2, 99) if r < 0.35 else rng.randint(100, 999) if r < 0.75 else rng.randint(1000, 25000)
    )
    whole = f"{value:,}" if value >= 1000 and rng.random() < 0.7 else str(value)
    return f"{whole}.{rng.randint(0, 99):02d}" if cents and rng.random() < 0.3 else whole


def _money(rng: random.Random) -> Filled:
    r = rng.random()
    if r < 0.05:
        return "", f"{rng.choice(('1', '1.5', '2', '2.5', '3', '5', '10', '12'))}k"
    if r < 0.12:
        return "", f"{rng.randint(5, 200)} bucks"
    if r < 0.6:
        symbol = rng.choice(("$", "$", "$", "€", "€", "£", "£", "$ ", "US$", "¥"))
        return "", f"{symbol}{_amount(rng, cents=symbol != '¥')}"
    if r < 0.8:
        word = rng.choice(("dollars", "euros", "pounds", "USD", "EUR", "GBP", "rupees", "dirhams", "€"))
        gap = "" if word == "€" else " "
        return "", f"{_amount(rng, cents=word in ('USD', 'EUR', 'GBP'))}{gap}{word}"
    code = rng.choice(("USD", "EUR", "GBP", "CAD", "AUD", "INR", "AED"))
    return "", f"{code} {_amount(rng, cents=True)}"


def _order_number(rng: random.Random) -> Filled:
    digits = str(rng.randint(10000, 99999999))
    return "", rng.choice((digits, digits, f"#{digits}", f"ORD-{digits}"))


def _phone(rng: random.Random) -> Filled:
    n = rng.randint
    forms = (
        f"555-{n(0, 9999):04d}",
        f"07700 {n(900000, 900999)}",
        f"+44 20 7946 {n(0, 9999):04d}",
        f"({n(200, 989)}) 555-{n(100, 199):04d}",
        f"+1 {n(200, 989)} 555 {n(100, 199):04d}",
        f"0{n(100000000, 999999999)}",
    )
    return "", rng.choice(forms)


def _reference(rng: random.Random) -> Filled:
    letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))
    return "", rng.choice(
        (f"{letters}-{rng.randint(1000, 99999)}", f"{letters}{rng.randint(100000, 9999999)}")
    )


def _time(rng: random.Random) -> Filled:
    hour = rng.randint(1, 12)
    return "", rng.choice(
        (f"{hour}pm", f"{hour}am", f"{hour}:{rng.choice(('00', '15', '30', '45'))}", f"{hour} o'clock")
    )


def _quantity(rng: random.Random) -> Filled:
    return "", rng.choice((str(rng.randint(2, 12)), str(rng.randint(2, 12)), rng.choice(NUMBER_WORDS)))


def _pick(values: tuple[str, ...]) -> Callable[[random.Random], Filled]:
    return lambda rng: ("", rng.choice(values))


# Slot name → (entity label or None for untagged text, filler).
SLOTS: dict[str, tuple[str | None, Callable[[random.Random], Filled]]] = {
    "PERSON": ("PERSON", _person),
    "ORG": ("ORG", _pick(ORGS)),
    "BANK": ("ORG", _pick(BANKS)),
    "SHOP": ("ORG", _pick(SHOPS)),
    "UTILITY": ("ORG", _pick(UTILITIES)),
    "AIRLINE": ("ORG", _pick(AIRLINES)),
    "TELECOM": ("ORG", _pick(TELECOMS)),
    "COURIER": ("ORG", _pick(COURIERS)),
    "INSURER": ("ORG", _pick(INSURERS)),
    "SERVICE": ("ORG", _pick(SERVICES)),
    "LOCATION": ("LOCATION", _location),
    "CITY": ("LOCATION", _pick(CITIES)),
    "COUNTRY": ("LOCATION", _country),
    "DATE": ("DATE", lambda rng: ("", _calendar_date(rng))),  # a noun phrase: "dated {DATE}"
    "DATE_PAST": ("DATE", lambda rng: ("", _past_date(rng))),  # "since {DATE_PAST}"
    "DATE_NEXT": ("DATE", lambda rng: ("", _next_date(rng))),  # "by {DATE_NEXT}"
    "WHEN_PAST": ("DATE", _when_past),  # adverbial: "on 3 March", "yesterday", "two days ago"
    "WHEN_NEXT": ("DATE", lambda rng: _on(_next_date(rng))),  # adverbial: "on the 5th", "next Friday"
    "MONEY": ("MONEY", _money),
    "ORDER": (None, _order_number),
    "PHONE": (None, _phone),
    "REF": (None, _reference),
    "TIME": (None, _time),
    "QTY": (None, _quantity),
    "DIGITS": (None, lambda rng: ("", f"{rng.randint(0, 9999):04d}")),
    "PCT": (None, lambda rng: ("", f"{rng.choice((5, 10, 15, 20, 25, 30, 50))}%")),
    "PRODUCT": (None, _pick(PRODUCTS)),
    "PLAN": (None, _pick(PLANS)),
}

# ---------------------------------------------------------------- templates

TEMPLATES = (
    # payments and transfers
    "Please send {MONEY} to {PERSON} {WHEN_NEXT}.",
    "Transfer {MONEY} from my {BANK} account to {PERSON}.",
    "I want to move {MONEY} from {BANK} to {BANK}.",
    "can you pay {PERSON} {MONEY} for the rent",
    "Why was I charged {MONEY} by {SHOP} {WHEN_PAST}?",
    "There is a payment of {MONEY} to {ORG} on my statement that I don't recognise.",
    "My {BANK} card was declined in {CITY} {WHEN_PAST}.",
    "Set up a standing order of {MONEY} to {PERSON} starting {DATE}.",
    "{PERSON} sent me {MONEY} {WHEN_PAST} but it hasn't arrived.",
    "How much is the fee for sending {MONEY} to {COUNTRY}?",
    "I need to send {MONEY} to my brother in {LOCATION}",
    "Split the {MONEY} dinner bill between {PERSON}, {PERSON} and me.",
    "Reverse the transfer of {MONEY} I made to {PERSON} {WHEN_PAST}, it was a mistake!",
    "Can I withdraw {MONEY} from an ATM in {CITY}?",
    "My salary of {MONEY} from {ORG} was due {WHEN_PAST} and still isn't in my account.",
    "I paid {MONEY} to {ORG} and {MONEY} to {ORG} {WHEN_PAST}, please confirm both.",
    "Is it possible to get a loan of {MONEY} from {BANK}?",
    "Why does my balance show {MONEY} when I deposited {MONEY} {WHEN_PAST}?",
    "What's the cheapest way to send {MONEY} from {COUNTRY} to {COUNTRY}?",
    "Could you tell {PERSON} that I'll transfer the {MONEY} {WHEN_NEXT}?",
    "{MONEY} rent is due {WHEN_NEXT} and my {BANK} app won't let me pay",
    "transfer {MONEY} {WHEN_NEXT}",
    "pay {ORG} {MONEY}",
    # disputes and refunds
    "I was charged {MONEY} instead of {MONEY} for my {PRODUCT}.",
    "How do I dispute a {MONEY} charge from {ORG}?",
    "I was charged {MONEY} twice for my {SERVICE} subscription.",
    "I returned the {PRODUCT} to {SHOP} {WHEN_PAST} and I'm still waiting for my {MONEY} refund.",
    "When will {SHOP} refund the {MONEY} for order {ORDER}?",
    "{AIRLINE} cancelled my flight and promised a refund of {MONEY}.",
    "I was told by {PERSON} at {ORG} that the refund would arrive by {DATE_NEXT}.",
    "{SHOP} charged me {MONEY} for delivery but it was supposed to be free over {MONEY}.",
    "refund {MONEY} please",
    "My card was used in {LOCATION} without my permission {WHEN_PAST}, there were {QTY} transactions totalling {MONEY}.",
    "I got {PCT} off at {SHOP} but was still charged the full {MONEY}",
    "I ordered {QTY} tickets to {CITY} for {MONEY} and only got one.",
    # travel
    "I'd like to book a flight from {CITY} to {CITY} {WHEN_NEXT}.",
    "Is there a direct {AIRLINE} flight from {CITY} to {CITY} on {DATE}?",
    "Please change my {AIRLINE} booking from {DATE} to {DATE}.",
    "I need a hotel in {CITY} from {DATE} to {DATE} for {QTY} people.",
    "My luggage didn't arrive in {CITY} with {AIRLINE} {WHEN_PAST}.",
    "how much does a return ticket to {LOCATION} cost",
    "Can I bring my dog on a {AIRLINE} flight to {COUNTRY}?",
    "We are travelling to {COUNTRY} {WHEN_NEXT}, will my card work there?",
    "Please note I will be in {COUNTRY} and {COUNTRY} until {DATE_NEXT} so don't block my card.",
    "The upgrade to {PLAN} on my flight to {CITY} cost {MONEY}, is that right?",
    "My connecting flight in {CITY} was delayed by {QTY} hours and I missed my meeting.",
    "{PERSON} and I are flying to {CITY} {WHEN_NEXT}, can we sit together?",
    "My flight with {AIRLINE} on {DATE} was overbooked and I had to pay {MONEY} for a hotel.",
    "flights to {CITY}?",
    "Can I add {QTY} extra bags to my {AIRLINE} booking {REF}?",
    "Hi, I'm writing because I booked a trip to {LOCATION} through {SERVICE} for {MONEY} and the host cancelled {WHEN_PAST}, what are my options?",
    # complaints
    "I want to make a complaint about {PERSON} at your {CITY} branch.",
    "{PERSON} from your team was really rude to me on the phone {WHEN_PAST}.",
    "This is the third time {COURIER} has missed my delivery.",
    "Your agent {PERSON} promised me a call back {WHEN_NEXT} and nobody called.",
    "I'm very unhappy with {TELECOM}, my bill went up to {MONEY} without any warning.",
    "I've been a loyal {ORG} customer for years and this is the worst service ever",
    "The {SHOP} store in {CITY} wouldn't accept my return",
    # appointments
    "Can I book an appointment with {PERSON} {WHEN_NEXT}?",
    "I need to reschedule my appointment from {DATE} to {DATE}.",
    "Is {PERSON} available {WHEN_NEXT} at {TIME}?",
    "Please cancel my meeting with {PERSON} at the {CITY} office.",
    "book me in for {DATE_NEXT} at {TIME} with {PERSON}",
    "I'd like to see a financial adviser in {CITY} before {DATE_NEXT}.",
    "Can {PERSON} collect my new card from the {CITY} branch {WHEN_NEXT}?",
    # utilities
    "My {UTILITY} bill is {MONEY} higher than usual.",
    "{UTILITY} says I owe {MONEY} but I paid {MONEY} {WHEN_PAST}.",
    "We are moving to {CITY} on {DATE}, please close my {UTILITY} account.",
    "The engineer from {UTILITY} never turned up {WHEN_PAST}.",
    "Can someone read my meter {WHEN_NEXT}?",
    "I was overcharged {MONEY} by {UTILITY} for gas I did not use.",
    "set up a direct debit of {MONEY} a month to {UTILITY}",
    "The letter from {ORG} dated {DATE} says I owe {MONEY}.",
    # deliveries
    "Where is my parcel? {COURIER} said it would arrive {WHEN_NEXT}.",
    "My {COURIER} tracking says delivered {WHEN_PAST} but nothing came",
    "The package from {SHOP} was left with my neighbour {PERSON}.",
    "Order {ORDER} from {SHOP} has been stuck in {CITY} since {DATE_PAST}.",
    "{COURIER} wants {MONEY} in customs fees for a parcel from {COUNTRY}.",
    "can {COURIER} redeliver {WHEN_NEXT} between {TIME} and {TIME}",
    "I ordered {QTY} items from {SHOP} on {DATE} and only one arrived.",
    "Hello, I paid {MONEY} to {SHOP} for a {PRODUCT} {WHEN_PAST}, they said it would be delivered by {DATE_NEXT}, but {COURIER} now says it is stuck in {CITY}. Can you help?",
    "{COURIER} parcel for {PERSON} missing",
    # telecoms
    "My {TELECOM} phone bill shows {MONEY} of roaming charges from my trip to {COUNTRY}.",
    "I want to switch from {TELECOM} to {TELECOM}.",
    "Can I keep my number {PHONE} if I move to {TELECOM}?",
    "My {TELECOM} internet has been down since {DATE_PAST}.",
    "How much is the {PLAN} plan with {TELECOM}?",
    "{PERSON}, {PERSON} and {PERSON} are on my family plan, can I remove {PERSON}?",
    # insurance
    "I want to make a claim with {INSURER} for my car accident in {CITY} {WHEN_PAST}.",
    "{INSURER} only paid {MONEY} of my {MONEY} claim.",
    "My policy with {INSURER} renews on {DATE} and the premium went up to {MONEY}.",
    "please cancel my {INSURER} home insurance from {DATE}",
    "Does my {INSURER} travel cover work in {COUNTRY}?",
    # account details
    "Please update my address, I moved from {CITY} to {CITY}.",
    "Add {PERSON} as a second holder on my account.",
    "I'm calling on behalf of my mother, {PERSON}.",
    "Hi, this is {PERSON}, my account number ends in {DIGITS}.",
    "My name is {PERSON} and I live in {LOCATION}.",
    "Hello {PERSON}, thanks for your help {WHEN_PAST}!",
    "Does {ORG} have an office in {LOCATION}?",
    "I lost my wallet in {CITY}, please freeze my {BANK} cards",
    "Could you call me back on {PHONE} {WHEN_NEXT}?",
    "Ask {PERSON} to email me the invoice for {MONEY}.",
    "{PERSON} here",
    "My daughter {PERSON} is studying in {CITY} and I want to send her {MONEY} for rent.",
    "I opened my {BANK} account in {COUNTRY} on {DATE}, can I still use it here?",
)

NO_ENTITY_TEMPLATES = (
    "my app keeps crashing when I log in",
    "Can you help me reset my password?",
    "I can't find order {ORDER} in my account.",
    "How do I change my PIN?",
    "The website shows error {REF} when I try to pay",
    "I ordered {QTY} items but only received one.",
    "Please call me on {PHONE}.",
    "My {PRODUCT} stopped charging.",
    "Is the {PLAN} plan worth it?",
    "Where can I see my statements?",
    "I want to close my account",
    "Why is my card not working?",
    "Thanks for the quick reply!",
    "How long does a refund usually take?",
    "The tracking number {REF} doesn't work.",
    "My card ending in {DIGITS} was blocked.",
    "I got {PCT} off but the discount disappeared at checkout.",
    "Can I upgrade to {PLAN}?",
    "Your chatbot is useless, let me speak to a human",
    "I need to update my phone number to {PHONE}.",
    "Order {ORDER} arrived broken, {QTY} of the plates are cracked.",
    "How do I add a new payee?",
    "Do you offer student accounts?",
    "Please stop sending me marketing emails.",
    "I forgot my username",
    "Is there a fee for paying by card?",
    "My {PRODUCT} screen is cracked, is it covered?",
    "I'd like to speak to someone about my mortgage.",
    "The meter reading I sent was wrong, it should be {ORDER}.",
    "ok thanks, that fixed it",
    "Why do I need to verify my identity again?",
    "Hello, is anyone there?",
    "The verification code never arrives",
    "I was on hold for {QTY} minutes and then got cut off.",
    "Cancel my subscription please",
    "Can I pay in installments?",
    "My package says it's out for delivery but it's {TIME} already",
    "Help, I sent money to the wrong account!",
    "I need a copy of invoice {ORDER}.",
    "Please add {QTY} more bags to booking {REF}.",
    "The {PRODUCT} I bought has a dent, can I exchange it?",
    "My {PLAN} membership number is {ORDER} but it isn't recognised",
)

NO_ENTITY_FRACTION = 0.1
OPENERS = ("Hi, ", "Hello, ", "Hey ", "Good morning, ", "Hi there, ", "Excuse me, ", "Quick question: ")
CLOSERS = (" Thanks.", " Thank you!", " Thanks in advance.", " Cheers", " Please help.", " ASAP!")
_SLOT = re.compile(r"\{([A-Z_]+)\}")


def _fill(template: str, rng: random.Random) -> SpanExample:
    """Fill a template's slots left to right, recording each entity's offsets as it is placed."""
    parts = _SLOT.split(template)  # literal, slot, literal, slot, ..., literal
    if parts[0] and not parts[0].startswith(("Hi", "Hello")) and rng.random() < 0.12:
        first = parts[0] if parts[0].startswith(("I ", "I'")) else parts[0][0].lower() + parts[0][1:]
        parts[0] = rng.choice(OPENERS) + first
    r = rng.random()
    if r < 0.2:
        parts[-1] = parts[-1].rstrip(".?!")
    elif r < 0.28 and parts[-1].endswith((".", "?", "!")):
        parts[-1] += rng.choice(CLOSERS)
    case: Callable[[str], str] = str.lower if rng.random() < 0.15 else str
    pieces: list[str] = []
    spans: list[tuple[int, int, str]] = []
    position = 0
    for i, part in enumerate(parts):
        if i % 2 == 0:
            before, value, label = part, "", None
        else:
            label, filler = SLOTS[part]
            before, value = filler(rng)
        before, value = case(before), case(value)
        position += len(before)
        if label is not None:
            spans.append((position, position + len(value), label))
        position += len(value)
        pieces += (before, value)
    return SpanExample("".join(pieces), spans)


def generate_entity_sentences(count: int = 3600, seed: int = 11) -> list[SpanExample]:
    """`count` customer-service messages, NO_ENTITY_FRACTION of them without entities; same seed, same list."""
    rng = random.Random(seed)
    empty = round(count * NO_ENTITY_FRACTION)
    kinds = [True] * empty + [False] * (count - empty)
    rng.shuffle(kinds)
    return [_fill(rng.choice(NO_ENTITY_TEMPLATES if is_empty else TEMPLATES), rng) for is_empty in kinds]


# ---------------------------------------------------------------- readers


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")


def read_conll(path: Path) -> list[SpanExample]:
    """CoNLL-style `token ... TAG` lines, a blank line between sentences (see the module docstring)."""
    _require_file(path)
    examples: list[SpanExample] = []
    tokens: list[str] = []
    spans: list[tuple[int, int, str]] = []
    position = 0
    current: tuple[int, str] | None = None  # (start, label) of the entity being read
    end = 0  # end of the last token

    def close_entity() -> None:
        nonlocal current
        if current is not None:
            spans.append((current[0], end, current[1]))
            current = None

    def close_sentence() -> None:
        nonlocal tokens, spans, position
        close_entity()
        if tokens:
            examples.append(SpanExample(" ".join(tokens), spans))
        tokens, spans, position = [], [], 0

    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line:
            close_sentence()
            continue
        if line.startswith("-DOCSTART-"):
            continue
        columns = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
        if len(columns) < 2 or not columns[0]:
            raise ValueError(f"{path}:{n}: expected a token and a tag, got {raw!r}")
        token, tag = columns[0], columns[-1]
        prefix, dash, label = tag.partition("-")
        if tag != "O" and not (prefix in ("B", "I") and dash and label):
            raise ValueError(f"{path}:{n}: tag {tag!r} is not O, B-<type> or I-<type>")
        start = position + (1 if tokens else 0)
        if tag == "O":
            close_entity()
        elif prefix == "B" or current is None or current[1] != label:
            close_entity()
            current = (start, label)
        tokens.append(token)
        end = position = start + len(token)
    close_sentence()
    if not examples:
        raise ValueError(f"{path}: no sentences")
    return examples


def _int_field(entity: dict, key: str) -> int | None:
    value = entity.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_span_jsonl(path: Path) -> list[SpanExample]:
    """One {"text": ..., "entities": [{"start", "end", "label"}, ...]} object per line."""
    examples: list[SpanExample] = []
    for where, obj in jsonl_objects(path):
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("text"), str)
            or not isinstance(obj.get("entities"), list)
        ):
            raise ValueError(f'{where}: each line needs "text" (a string) and "entities" (a list)')
        text = obj["text"]
        spans: list[tuple[int, int, str]] = []
        for entity in obj["entities"]:
            if not isinstance(entity, dict):
                raise ValueError(f"{where}: each entity must be an object, got {entity!r}")
            start, end, label = _int_field(entity, "start"), _int_field(entity, "end"), entity.get("label")
            if start is None or end is None or not isinstance(label, str) or not label:
                raise ValueError(
                    f'{where}: each entity needs integer "start" and "end" and a "label", got {entity!r}'
                )
            if not 0 <= start < end <= len(text):
                raise ValueError(
                    f"{where}: entity offsets {start}..{end} do not fit 0 <= start < end <= {len(text)}"
                )
            spans.append((start, end, label))
        spans.sort()
        for (_, prev_end, _), (start, end, _) in itertools.pairwise(spans):
            if start < prev_end:
                raise ValueError(f"{where}: entities overlap at {start}..{min(end, prev_end)}")
        examples.append(SpanExample(text, spans))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def load_span_examples(source: str, seed: int = 11) -> list[SpanExample]:
    """Examples from a source: "generated:entities" → generate_entity_sentences(seed=seed); a .jsonl
    path → read_span_jsonl; any other path (.conll, .txt, .tsv) → read_conll."""
    if source.startswith("generated:"):
        name = source.removeprefix("generated:")
        if name != "entities":
            raise ValueError(f"unknown generated dataset {name!r}; known: entities")
        return generate_entity_sentences(seed=seed)
    path = Path(source).expanduser()
    return read_span_jsonl(path) if path.suffix.lower() == ".jsonl" else read_conll(path)
