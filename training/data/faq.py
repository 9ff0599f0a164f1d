"""A customer-service FAQ and paraphrased user questions, for semantic search: generated demo data and
a reader for users' documents.

Every source becomes `RetrievalData`: the documents (what the index holds: `id`, `text`, metadata)
and user questions split into train / validation / test, each question pointing at the document that
answers it.

Sources (`load_retrieval_data`):

* ``generated:faq`` - a retail bank's FAQ: every (product, topic) pair of a category gets one entry
  with a question, an answer and its category (cards, accounts, loans, digital banking, payments;
  163 entries). Many entries are near neighbours on purpose: the same topic for
  another product ("activate my debit card" / "activate my credit card") or another topic for the
  same product ("cancel my credit card" / "freeze my credit card"), so the nearest entries of a
  question are usually of its own category (the hard negatives of the fine-tune).
  User questions are paraphrases made from sentence frames per topic, filled with a wording of the
  topic's verb and a wording of the product ("turn on my bank card"), written as users write: mostly
  lower case, often without a question mark, sometimes with a greeting or a "thanks". The frames of each topic are split between train, validation
  and test, so the held-out questions are phrased in ways the fine-tune never saw. Deterministic: one
  ``random.Random(seed)`` draws everything in a fixed order.
* a ``.jsonl`` file - one document per line: ``{"id": "...", "text": "...", "metadata": {...},
  "queries": ["...", ...]}``; `metadata` (flat: strings, numbers, booleans) and `queries` (example
  user questions for the fine-tune and its evaluation) are optional. Questions are split per
  document, deterministically from the seed; documents without questions are only indexed.
  `tuneserve index MODEL FILE` reads the same format (its `queries` are ignored).

Errors in a file name the file and line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from serving.index import Document, read_documents


@dataclass(frozen=True)
class Question:
    text: str
    document: int  # position of the answering document in `RetrievalData.documents`


@dataclass
class RetrievalData:
    documents: list[Document]
    train: list[Question]
    val: list[Question]
    test: list[Question]


@dataclass(frozen=True)
class FaqEntry:
    id: str
    question: str
    answer: str
    category: str

    def document(self) -> Document:
        """The entry as the index holds it: question and answer as its text, category and question as
        metadata (the category is what `filter` selects on)."""
        return Document(
            self.id, f"{self.question} {self.answer}", {"category": self.category, "question": self.question}
        )


# ---------------------------------------------------------------- the FAQ

# Per category: its products, each with the wordings users use for it (the first is the FAQ's own).
PRODUCTS: dict[str, dict[str, tuple[str, ...]]] = {
    "cards": {
        "debit card": ("debit card", "bank card", "ATM card"),
        "credit card": ("credit card", "Visa card", "credit-card"),
        "prepaid card": ("prepaid card", "top-up card", "reloadable card"),
        "virtual card": ("virtual card", "digital card", "online card"),
    },
    "accounts": {
        "checking account": ("checking account", "current account", "everyday account"),
        "savings account": ("savings account", "saver account", "savings"),
        "joint account": ("joint account", "shared account", "account with my partner"),
        "business account": ("business account", "company account", "business banking account"),
        "student account": ("student account", "account for students", "uni account"),
    },
    "loans": {
        "personal loan": ("personal loan", "loan", "unsecured loan"),
        "car loan": ("car loan", "auto loan", "vehicle finance"),
        "mortgage": ("mortgage", "home loan", "house loan"),
        "overdraft": ("overdraft", "arranged overdraft", "overdraft facility"),
    },
    "digital": {
        "mobile app": ("mobile app", "banking app", "phone app"),
        "online banking": ("online banking", "internet banking", "web banking"),
        "smartwatch app": ("smartwatch app", "watch app", "wearable app"),
    },
    "payments": {
        "international transfer": ("international transfer", "overseas payment", "wire abroad"),
        "domestic transfer": ("domestic transfer", "bank transfer", "transfer to another bank"),
        "direct debit": ("direct debit", "automatic payment", "auto-debit"),
        "standing order": ("standing order", "recurring transfer", "regular payment"),
        "bill payment": ("bill payment", "paying a bill", "utility payment"),
    },
}


@dataclass(frozen=True)
class Topic:
    """One kind of question, asked about every product of a category."""

    key: str
    question: str  # the FAQ's question, {p} the product
    answer: str
    verbs: tuple[str, ...]  # wordings of the topic's verb, {v} in the frames
    frames: tuple[str, ...]  # users' sentences, {v} a verb wording, {p} a product wording


TOPICS: dict[str, tuple[Topic, ...]] = {
    "cards": (
        Topic(
            "activate",
            "How do I activate my new {p}?",
            "Open the app, go to Cards and choose Activate, or make a chip-and-PIN payment or ATM withdrawal with the {p}.",
            ("activate", "turn on", "start using", "enable", "set up"),
            (
                "how do i {v} my new {p}",
                "my {p} just arrived, how do i {v} it",
                "what's the way to {v} a {p}",
                "{v} {p}",
                "need to {v} the {p} that came in the post",
                "can you help me {v} my {p}",
                "steps to {v} a {p}",
                "is there a way to {v} my {p} online",
                "got a new {p}, what do i do to {v} it",
                "where in the app can i {v} my {p}",
            ),
        ),
        Topic(
            "lost",
            "What should I do if my {p} is lost or stolen?",
            "Freeze the {p} in the app straight away and report it lost or stolen; we cancel it and send a replacement within 5 working days.",
            ("lost", "misplaced", "had stolen", "can't find", "dropped"),
            (
                "i {v} my {p}",
                "what do i do, i {v} my {p}",
                "help i think i {v} my {p} yesterday",
                "{p} {v}",
                "someone may have my {p}, i {v} it",
                "i {v} my {p} on the train, what now",
                "what happens if i {v} my {p}",
                "report that i {v} my {p}",
                "my wallet with my {p} is gone, i {v} it",
                "urgent: {v} my {p} abroad",
            ),
        ),
        Topic(
            "fees",
            "What fees are charged on the {p}?",
            "The {p} has no monthly fee; cash withdrawals abroad cost 2% and payments in other currencies 1.5%.",
            ("fees", "charges", "costs", "monthly fee", "hidden charges"),
            (
                "what are the {v} on the {p}",
                "does the {p} have any {v}",
                "how much are the {v} for a {p}",
                "{p} {v}",
                "tell me about {v} for the {p}",
                "are there {v} if i use my {p}",
                "why am i paying {v} on my {p}",
                "list of {v} for {p}",
                "any {v} with the {p}?",
                "what {v} come with a {p}",
            ),
        ),
        Topic(
            "limit",
            "How do I change the spending limit on my {p}?",
            "Go to Cards, choose the {p} and Limits; you can lower a limit at once, raising it may need a check.",
            ("spending limit", "daily limit", "payment limit", "withdrawal limit", "limit"),
            (
                "how do i change the {v} on my {p}",
                "can i raise the {v} of my {p}",
                "{p} {v} too low",
                "increase {v} {p}",
                "where do i set the {v} for my {p}",
                "i want a higher {v} on the {p}",
                "lower the {v} on my {p} please",
                "what is the {v} of a {p}",
                "my {p} hit its {v}",
                "adjust {v} for {p}",
            ),
        ),
        Topic(
            "replace",
            "How do I get a replacement for a damaged {p}?",
            "Order a replacement {p} in the app under Cards > Replace; the old card keeps working until the new one is activated.",
            ("damaged", "broken", "cracked", "worn out", "bent"),
            (
                "my {p} is {v}, can i get a new one",
                "how do i replace a {v} {p}",
                "{v} {p} replacement",
                "the chip on my {p} is {v}",
                "need a new {p}, mine is {v}",
                "can you send a new {p}, this one is {v}",
                "what do i do with a {v} {p}",
                "order a replacement for my {v} {p}",
                "{p} {v} and not working",
                "my {p} got {v}, what now",
            ),
        ),
        Topic(
            "cancel",
            "How do I cancel my {p}?",
            "Call us or choose Cards > Close {p} in the app; pay off any balance first and cut the card up.",
            ("cancel", "close", "get rid of", "terminate", "stop"),
            (
                "how do i {v} my {p}",
                "i want to {v} my {p}",
                "{v} {p}",
                "please {v} my {p} for good",
                "i don't need my {p} anymore, how do i {v} it",
                "what's the process to {v} a {p}",
                "can i {v} the {p} online",
                "i'd like to {v} the {p} i have with you",
                "help me {v} my {p}",
                "is it possible to {v} my {p} today",
            ),
        ),
        Topic(
            "abroad",
            "Can I use my {p} abroad?",
            "Yes, the {p} works wherever Visa is accepted; turn on travel mode in the app to avoid fraud blocks.",
            ("abroad", "overseas", "on holiday", "in another country", "when travelling"),
            (
                "can i use my {p} {v}",
                "will my {p} work {v}",
                "using {p} {v}",
                "does the {p} work {v}",
                "i'm going {v}, can i pay with my {p}",
                "is my {p} accepted {v}",
                "paying with a {p} {v}",
                "should i tell you before using my {p} {v}",
                "{p} not working {v}",
                "what do i need to do to use the {p} {v}",
            ),
        ),
        Topic(
            "freeze",
            "How do I temporarily freeze my {p}?",
            "Tap Freeze on the {p} in the app; payments are blocked until you unfreeze it, nothing is cancelled.",
            ("freeze", "block", "lock", "pause", "suspend"),
            (
                "how do i {v} my {p} for a bit",
                "can i {v} my {p} temporarily",
                "{v} {p}",
                "i want to {v} my {p} but not cancel it",
                "is there a way to {v} the {p} for now",
                "{v} my {p} until i find it",
                "how to {v} a {p} in the app",
                "can i {v} and later unfreeze my {p}",
                "quickly {v} my {p}",
                "please {v} my {p} for a few days",
            ),
        ),
        Topic(
            "declined",
            "Why was my {p} declined?",
            "A {p} payment is declined when it is frozen, over its limit, blocked by a fraud check or short of funds; the app shows which.",
            ("declined", "refused", "rejected", "not accepted", "turned down"),
            (
                "why was my {p} {v}",
                "my {p} got {v} at the shop",
                "{p} {v}",
                "why is my {p} being {v}",
                "payment {v} on my {p} today",
                "my {p} keeps getting {v} online",
                "what to do when the {p} is {v}",
                "the {p} was {v} but i have money",
                "{v} transaction on my {p}",
                "why do shops say my {p} is {v}",
            ),
        ),
        Topic(
            "pin",
            "How do I change the PIN of my {p}?",
            "Change the {p}'s PIN at any of our ATMs (PIN services) or view it in the app under Cards > Show PIN.",
            ("change the PIN", "reset the PIN", "pick a new PIN", "update the PIN", "set a different PIN"),
            (
                "how do i {v} of my {p}",
                "can i {v} on my {p}",
                "i want to {v} for the {p}",
                "{v} {p}",
                "where can i {v} of my {p}",
                "forgot my code, need to {v} on the {p}",
                "is it possible to {v} of a {p} in the app",
                "help me {v} of my {p}",
                "i'd like to {v} on the {p}",
                "steps to {v} for my {p}",
            ),
        ),
    ),
    "accounts": (
        Topic(
            "open",
            "How do I open a {p}?",
            "Apply for a {p} in the app in about ten minutes with photo ID and proof of address.",
            ("open", "apply for", "get", "set up", "start"),
            (
                "how do i {v} a {p}",
                "i want to {v} a {p}",
                "{v} {p}",
                "can i {v} a {p} online",
                "what do i need to {v} a {p}",
                "steps to {v} a {p} with you",
                "i'd like to {v} a {p} today",
                "how long does it take to {v} a {p}",
                "is it easy to {v} a {p}",
                "help me {v} a {p}",
            ),
        ),
        Topic(
            "close",
            "How do I close my {p}?",
            "Move the money out, cancel payments linked to the {p} and choose Close in the app; it closes within 3 working days.",
            ("close", "shut", "cancel", "end", "get rid of"),
            (
                "how do i {v} my {p}",
                "i want to {v} my {p}",
                "{v} {p}",
                "please {v} my {p}",
                "what happens to my money if i {v} my {p}",
                "can i {v} the {p} online",
                "i'm moving banks, {v} my {p}",
                "steps to {v} a {p}",
                "i no longer need my {p}, {v} it",
                "how long does it take to {v} a {p}",
            ),
        ),
        Topic(
            "interest",
            "What interest rate does the {p} pay?",
            "The {p} pays a variable rate shown in the app under Rates; interest is worked out daily and paid monthly.",
            ("interest rate", "interest", "rate", "APY", "return"),
            (
                "what {v} does the {p} pay",
                "what's the {v} on a {p}",
                "{p} {v}",
                "how much {v} will i get on my {p}",
                "is the {v} on the {p} fixed",
                "current {v} for {p}",
                "does my {p} earn {v}",
                "when is {v} paid on the {p}",
                "compare {v} {p}",
                "has the {v} on my {p} changed",
            ),
        ),
        Topic(
            "fees",
            "Does the {p} have a monthly fee?",
            "The {p} has no monthly fee; some services (paper statements, urgent payments) are charged as listed in the tariff.",
            ("monthly fee", "fees", "maintenance fee", "charges", "account fee"),
            (
                "does the {p} have a {v}",
                "how much is the {v} on a {p}",
                "{p} {v}",
                "why was i charged a {v} on my {p}",
                "are there {v} for keeping a {p}",
                "is there a {v} for the {p}",
                "what {v} apply to my {p}",
                "can the {v} on my {p} be waived",
                "{v} for {p}?",
                "tell me the {v} of a {p}",
            ),
        ),
        Topic(
            "statement",
            "Where can I find statements for my {p}?",
            "Statements for the {p} are in the app under Documents, monthly as PDFs for the last 7 years.",
            ("statement", "bank statement", "monthly statement", "account history", "transaction list"),
            (
                "where can i find a {v} for my {p}",
                "how do i download a {v} of my {p}",
                "{p} {v}",
                "i need a {v} for my {p} for my landlord",
                "can i get a paper {v} for the {p}",
                "where is the {v} of my {p} in the app",
                "print {v} {p}",
                "send me a {v} of my {p}",
                "old {v} for a {p}",
                "how far back does the {v} of my {p} go",
            ),
        ),
        Topic(
            "holder",
            "How do I add another person to my {p}?",
            "The other person applies in the app by invitation from Account > Add holder; both of you must pass the ID check for the {p}.",
            ("add someone", "add another person", "add a second holder", "add my partner", "add a person"),
            (
                "how do i {v} to my {p}",
                "can i {v} to the {p}",
                "{v} {p}",
                "i want to {v} on my {p}",
                "is it possible to {v} to a {p}",
                "what do i need to {v} to my {p}",
                "steps to {v} on the {p}",
                "help me {v} to the {p}",
                "{v} to a {p} online",
                "can you {v} to my {p}",
            ),
        ),
        Topic(
            "minimum",
            "Is there a minimum balance for the {p}?",
            "The {p} has no minimum balance; below zero you need an arranged overdraft.",
            ("minimum balance", "minimum deposit", "least amount", "lowest balance", "required balance"),
            (
                "is there a {v} for the {p}",
                "what is the {v} on a {p}",
                "{p} {v}",
                "do i need a {v} to keep my {p}",
                "what happens if i go under the {v} on my {p}",
                "how much is the {v} for a {p}",
                "does the {p} need a {v}",
                "{v} required for {p}?",
                "any {v} rule on the {p}",
                "tell me the {v} of the {p}",
            ),
        ),
        Topic(
            "switch",
            "Can I switch my {p} from another bank?",
            "Yes: start the switch in the app; we move your balance and payments to the new {p} in 7 working days.",
            ("switch", "move", "transfer", "bring over", "port"),
            (
                "can i {v} my {p} from another bank",
                "how do i {v} my {p} to you",
                "{v} {p} from my old bank",
                "i want to {v} my {p} here",
                "how long does it take to {v} a {p}",
                "what do i need to {v} my {p}",
                "is it free to {v} a {p}",
                "help me {v} my {p} over",
                "will my payments move if i {v} my {p}",
                "steps to {v} a {p} from another bank",
            ),
        ),
    ),
    "loans": (
        Topic(
            "apply",
            "How do I apply for a {p}?",
            "Apply for a {p} in the app: you see a personal rate before a full credit check, and a decision within minutes.",
            ("apply for", "get", "take out", "request", "sign up for"),
            (
                "how do i {v} a {p}",
                "i want to {v} a {p}",
                "{v} {p}",
                "can i {v} a {p} online",
                "what do i need to {v} a {p}",
                "how long does it take to {v} a {p}",
                "steps to {v} a {p}",
                "i'd like to {v} a {p} with you",
                "help me {v} a {p}",
                "is it hard to {v} a {p}",
            ),
        ),
        Topic(
            "rates",
            "What is the interest rate on a {p}?",
            "The {p} rate depends on the amount, the term and your credit history; the app shows your own rate without affecting your score.",
            ("interest rate", "APR", "rate", "interest", "cost"),
            (
                "what is the {v} on a {p}",
                "how much {v} do you charge on a {p}",
                "{p} {v}",
                "current {v} for a {p}",
                "is the {v} on your {p} fixed",
                "what {v} would i get for a {p}",
                "compare {v} {p}",
                "why is the {v} on my {p} so high",
                "tell me the {v} of a {p}",
                "can i lower the {v} on my {p}",
            ),
        ),
        Topic(
            "early",
            "Can I pay off my {p} early?",
            "Yes, settle the {p} early in the app at any time; an early-repayment charge of at most 58 days' interest may apply.",
            ("pay off", "repay", "settle", "clear", "pay back"),
            (
                "can i {v} my {p} early",
                "how do i {v} my {p} before the end",
                "{v} {p} early",
                "is there a fee to {v} my {p} early",
                "i want to {v} my {p} in full",
                "what does it cost to {v} a {p} now",
                "can i {v} part of my {p}",
                "how much to {v} my {p} today",
                "steps to {v} a {p} early",
                "i won the lottery, {v} my {p}",
            ),
        ),
        Topic(
            "eligibility",
            "Am I eligible for a {p}?",
            "You need to be 18 or over, a resident with a regular income and a good credit history; the eligibility checker for a {p} does not affect your score.",
            ("eligible for", "able to get", "allowed", "qualified for", "accepted for"),
            (
                "am i {v} a {p}",
                "how do i know if i'm {v} a {p}",
                "{v} {p}?",
                "who is {v} a {p}",
                "would i be {v} a {p} with bad credit",
                "can a student be {v} a {p}",
                "check if i'm {v} a {p}",
                "what makes someone {v} a {p}",
                "am i {v} a {p} if self-employed",
                "requirements to be {v} a {p}",
            ),
        ),
        Topic(
            "missed",
            "What happens if I miss a payment on my {p}?",
            "Call us as soon as you can: a missed {p} payment costs a fee and can affect your credit score, and we can agree a payment plan.",
            ("miss a payment", "can't pay", "skip a payment", "fall behind", "pay late"),
            (
                "what happens if i {v} on my {p}",
                "i {v} on my {p} this month",
                "{v} {p}",
                "help, i might {v} on my {p}",
                "is there a fee if i {v} on my {p}",
                "what if i {v} on the {p}",
                "i'm going to {v} on my {p}, what now",
                "does it hurt my score to {v} on a {p}",
                "who do i call if i {v} on the {p}",
                "can i {v} on my {p} once",
            ),
        ),
        Topic(
            "date",
            "Can I change the payment date of my {p}?",
            "Yes, once every 12 months: choose Payment date on the {p} in the app, to any day from the 1st to the 28th.",
            (
                "change the payment date",
                "move the due date",
                "pick another payment day",
                "shift the payment day",
                "change the due date",
            ),
            (
                "can i {v} of my {p}",
                "how do i {v} for my {p}",
                "{v} {p}",
                "i want to {v} on my {p}",
                "is it possible to {v} of the {p}",
                "i get paid later, can i {v} of my {p}",
                "help me {v} on my {p}",
                "steps to {v} of a {p}",
                "how often can i {v} of my {p}",
                "please {v} on the {p}",
            ),
        ),
        Topic(
            "documents",
            "What documents do I need for a {p}?",
            "For a {p} we need photo ID, proof of address and your last three payslips or tax returns if self-employed.",
            ("documents", "paperwork", "proof", "papers", "documentation"),
            (
                "what {v} do i need for a {p}",
                "which {v} are required to get a {p}",
                "{p} {v}",
                "do i need {v} to apply for a {p}",
                "list of {v} for a {p}",
                "what {v} should i bring for my {p}",
                "where do i upload {v} for my {p}",
                "are payslips enough {v} for a {p}",
                "{v} needed for a {p}?",
                "tell me the {v} for the {p}",
            ),
        ),
        Topic(
            "balance",
            "How much is left to pay on my {p}?",
            "The app shows what is left on the {p} and the settlement figure; a redemption statement is in Documents.",
            ("left to pay", "still owed", "remaining", "outstanding", "left"),
            (
                "how much is {v} on my {p}",
                "what's {v} on the {p}",
                "{p} amount {v}",
                "check what is {v} on my {p}",
                "how do i see what's {v} on my {p}",
                "is there much {v} on my {p}",
                "tell me what is {v} on the {p}",
                "where can i see the amount {v} on my {p}",
                "total {v} {p}",
                "what balance is {v} on my {p}",
            ),
        ),
    ),
    "digital": (
        Topic(
            "login",
            "Why can't I log in to the {p}?",
            "Check you use the latest version of the {p}, your username and password; after five wrong tries access is blocked for 24 hours.",
            ("log in to", "sign in to", "get into", "access", "open"),
            (
                "why can't i {v} the {p}",
                "i can't {v} the {p}",
                "{p} won't let me {v} it",
                "unable to {v} {p}",
                "problems trying to {v} the {p}",
                "it says error when i {v} the {p}",
                "help i can't {v} my {p}",
                "{v} {p} not working",
                "locked out when i try to {v} the {p}",
                "what's wrong, can't {v} the {p} today",
            ),
        ),
        Topic(
            "password",
            "How do I reset my {p} password?",
            "Tap Forgot password on the {p} sign-in screen; we text a code to your registered phone to set a new one.",
            ("reset", "change", "recover", "renew", "update"),
            (
                "how do i {v} my {p} password",
                "i need to {v} the password for {p}",
                "{v} {p} password",
                "can you help me {v} my {p} password",
                "where do i {v} my password in the {p}",
                "i want to {v} my {p} password",
                "steps to {v} the {p} password",
                "how can i {v} the password of my {p}",
                "{v} password {p} please",
                "what if i {v} my {p} password",
            ),
        ),
        Topic(
            "notifications",
            "How do I turn on notifications in the {p}?",
            "Go to Settings > Notifications in the {p} and choose which payments and balances to be told about.",
            ("notifications", "alerts", "push messages", "payment alerts", "balance alerts"),
            (
                "how do i turn on {v} in the {p}",
                "i don't get {v} from the {p}",
                "{p} {v}",
                "can the {p} send me {v}",
                "set up {v} in the {p}",
                "turn off {v} in the {p}",
                "where are {v} settings in the {p}",
                "why did the {p} stop sending {v}",
                "i want {v} from the {p} for every payment",
                "manage {v} on the {p}",
            ),
        ),
        Topic(
            "devices",
            "Which devices does the {p} work on?",
            "The {p} works on phones and tablets with the last two versions of iOS or Android, and in current browsers.",
            ("devices", "phones", "tablets", "operating systems", "gadgets"),
            (
                "which {v} does the {p} work on",
                "is my phone one of the {v} for the {p}",
                "{p} supported {v}",
                "can i use the {p} on older {v}",
                "what {v} can run the {p}",
                "does the {p} work on all {v}",
                "list of {v} for the {p}",
                "{p} on {v}?",
                "my {v} don't support the {p}",
                "how many {v} can use the {p}",
            ),
        ),
        Topic(
            "username",
            "How do I change my {p} username?",
            "You cannot change the username itself; sign in to the {p} and set a nickname, or ask us for a new username.",
            ("change", "update", "edit", "modify", "rename"),
            (
                "how do i {v} my {p} username",
                "can i {v} the username on the {p}",
                "{v} {p} username",
                "i want to {v} my username for {p}",
                "where do i {v} my username in the {p}",
                "help me {v} the user name of my {p}",
                "is it possible to {v} my {p} login name",
                "steps to {v} the {p} username",
                "{v} user id {p}",
                "please {v} my {p} username",
            ),
        ),
        Topic(
            "2fa",
            "How do I set up two-factor authentication for the {p}?",
            "Go to Settings > Security in the {p} and add an authenticator app or your phone number for sign-in codes.",
            ("two-factor authentication", "2FA", "two-step verification", "security codes", "sign-in codes"),
            (
                "how do i set up {v} for the {p}",
                "turn on {v} in the {p}",
                "{p} {v}",
                "does the {p} have {v}",
                "i'm not getting {v} for the {p}",
                "switch off {v} for the {p}",
                "where do i find {v} in the {p}",
                "can i use an app for {v} on the {p}",
                "change the phone for {v} on my {p}",
                "is {v} required for the {p}",
            ),
        ),
        Topic(
            "crash",
            "What should I do if the {p} keeps crashing?",
            "Update the {p}, restart your device and clear its cache; if it still crashes, reinstall it (your data stays with us).",
            ("keeps crashing", "freezes", "closes by itself", "is stuck loading", "won't load"),
            (
                "what should i do if the {p} {v}",
                "the {p} {v}",
                "my {p} {v} every time",
                "{p} {v}",
                "help, the {p} {v} since yesterday",
                "why the {p} {v}",
                "fix for when the {p} {v}",
                "the {p} {v} on my phone",
                "every time i pay the {p} {v}",
                "is there an outage, the {p} {v}",
            ),
        ),
    ),
    "payments": (
        Topic(
            "setup",
            "How do I set up a {p}?",
            "Choose Payments > New in the app, pick {p} and enter the payee's details; you confirm it with a code.",
            ("set up", "create", "make", "arrange", "start"),
            (
                "how do i {v} a {p}",
                "i want to {v} a {p}",
                "{v} {p}",
                "can i {v} a {p} in the app",
                "what do i need to {v} a {p}",
                "help me {v} a {p}",
                "steps to {v} a {p}",
                "where do i {v} a {p} online",
                "is it easy to {v} a {p}",
                "please {v} a {p} for me",
            ),
        ),
        Topic(
            "cancel",
            "How do I cancel a {p}?",
            "Find the {p} under Payments > Scheduled and choose Cancel at least one working day before it is due.",
            ("cancel", "stop", "delete", "remove", "end"),
            (
                "how do i {v} a {p}",
                "i want to {v} my {p}",
                "{v} {p}",
                "can i {v} a {p} in the app",
                "please {v} the {p} to my gym",
                "is it too late to {v} a {p} due tomorrow",
                "steps to {v} a {p}",
                "help me {v} a {p}",
                "where do i {v} a {p} online",
                "i need to {v} a {p} today",
            ),
        ),
        Topic(
            "fees",
            "Is there a fee for a {p}?",
            "A {p} in euros or pounds is free; other currencies cost 0.5% with the exchange rate shown before you confirm.",
            ("fee", "charge", "cost", "commission", "price"),
            (
                "is there a {v} for a {p}",
                "how much is the {v} of a {p}",
                "{p} {v}",
                "why was i charged a {v} for a {p}",
                "what's the {v} on a {p}",
                "do you take a {v} on a {p}",
                "any {v} for making a {p}",
                "tell me the {v} for a {p}",
                "is a {p} free or is there a {v}",
                "{v} for {p}?",
            ),
        ),
        Topic(
            "time",
            "How long does a {p} take?",
            "A {p} made before 4 pm on a working day usually arrives the same day; otherwise the next working day.",
            ("take", "last", "need", "require", "take to arrive"),
            (
                "how long does a {p} {v}",
                "how many days does a {p} {v}",
                "{p} how long does it {v}",
                "when will my {p} arrive",
                "why does a {p} {v} so long",
                "how fast is a {p}",
                "does a {p} {v} more than a day",
                "time a {p} will {v}",
                "my {p} is taking ages",
                "how long will the {p} {v} to reach them",
            ),
        ),
        Topic(
            "failed",
            "Why did my {p} fail?",
            "A {p} fails when the payee's details are wrong, the limit is reached or there was not enough money; you get the money back and can retry.",
            ("fail", "bounce", "not go through", "get returned", "get rejected"),
            (
                "why did my {p} {v}",
                "my {p} did {v}",
                "{p} {v}",
                "why would a {p} {v}",
                "what happens if a {p} does {v}",
                "my {p} seems to {v} every month",
                "do i get my money back if the {p} does {v}",
                "can a {p} {v} twice",
                "help my {p} did {v} today",
                "what makes a {p} {v}",
            ),
        ),
        Topic(
            "limit",
            "What is the maximum amount for a {p}?",
            "A {p} can be up to 25,000 a day in the app; for more, call us or visit a branch.",
            ("maximum amount", "limit", "most i can send", "upper limit", "cap"),
            (
                "what is the {v} for a {p}",
                "is there a {v} on a {p}",
                "{p} {v}",
                "what's the {v} per {p}",
                "can i go over the {v} for a {p}",
                "raise the {v} of a {p}",
                "how much is the {v} on a {p} per day",
                "tell me the {v} for my {p}",
                "{v} for {p}?",
                "why is there a {v} on my {p}",
            ),
        ),
    ),
}

OPENERS = ("", "", "", "hi, ", "hello ", "hey, ", "quick question: ", "excuse me, ", "good morning, ")
CLOSERS = ("", "", "", "?", "?", " please", ", thanks", " thank you", " asap", "??")
SPLIT_FRAMES = {"train": 6, "val": 2, "test": 2}  # of each topic's 10 frames
QUESTIONS_PER_ENTRY = {"train": 12, "val": 3, "test": 4}


def faq_entries() -> list[FaqEntry]:
    """The FAQ: one entry per (product, topic) of each category, in a fixed order."""
    entries = []
    for category, products in PRODUCTS.items():
        for topic in TOPICS[category]:
            for product in products:
                slug = product.replace(" ", "-")
                entries.append(
                    FaqEntry(
                        f"{category}-{slug}-{topic.key}",
                        topic.question.format(p=product),
                        topic.answer.format(p=product),
                        category,
                    )
                )
    return entries


def _casual(text: str, rng: random.Random) -> str:
    """A user's way of writing a question: an opener and closer, sometimes capitalised."""
    text = rng.choice(OPENERS) + text + rng.choice(CLOSERS)
    if rng.random() < 0.4:
        text = text[0].upper() + text[1:]
    return text


def generate_faq(seed: int = 17) -> RetrievalData:
    """The FAQ as documents and paraphrased user questions, each topic's frames split between train,
    validation and test (see the module docstring); same seed, same data."""
    rng = random.Random(seed)
    entries = faq_entries()
    documents = [e.document() for e in entries]
    splits: dict[str, list[Question]] = {name: [] for name in SPLIT_FRAMES}
    position = 0
    for category, products in PRODUCTS.items():
        for topic in TOPICS[category]:
            frames = list(topic.frames)
            rng.shuffle(frames)
            start, owned = 0, {}
            for name, count in SPLIT_FRAMES.items():
                owned[name] = frames[start : start + count]
                start += count
            for wordings in products.values():
                for name, count in QUESTIONS_PER_ENTRY.items():
                    seen: set[str] = set()
                    for _ in range(count * 4):  # draws until `count` distinct questions
                        if len(seen) == count:
                            break
                        core = rng.choice(owned[name]).format(
                            v=rng.choice(topic.verbs), p=rng.choice(wordings)
                        )
                        if core not in seen:
                            seen.add(core)
                            splits[name].append(Question(_casual(core, rng), position))
                position += 1
    return RetrievalData(documents, splits["train"], splits["val"], splits["test"])


# ---------------------------------------------------------------- users' documents


def split_questions(
    questions: list[list[str]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Question]]:
    """Each document's questions dealt to train / val / test in the given shares (shuffled by seed);
    a document with one question keeps it for training."""
    rng = random.Random(seed)
    splits: dict[str, list[Question]] = {"train": [], "val": [], "test": []}
    for position, texts in enumerate(questions):
        texts = list(texts)
        rng.shuffle(texts)
        n_test = round(len(texts) * test_fraction) if len(texts) > 1 else 0
        n_val = round(len(texts) * val_fraction) if len(texts) > 2 else 0
        for name, chunk in (
            ("test", texts[:n_test]),
            ("val", texts[n_test : n_test + n_val]),
            ("train", texts[n_test + n_val :]),
        ):
            splits[name] += [Question(t, position) for t in chunk]
    return splits


def load_retrieval_data(source: str, val_fraction: float, test_fraction: float, seed: int) -> RetrievalData:
    """`generated:faq` → generate_faq(seed); a .jsonl path → its documents and questions, split."""
    if source.startswith("generated:"):
        name = source.removeprefix("generated:")
        if name != "faq":
            raise ValueError(f"unknown generated dataset {name!r}; known: faq")
        return generate_faq(seed)
    documents, questions = read_documents(Path(source).expanduser())
    splits = split_questions(questions, val_fraction, test_fraction, seed)
    if not splits["train"] or not splits["val"] or not splits["test"]:
        raise ValueError(
            f"{source}: too few example questions to train and evaluate on "
            f'({len(splits["train"])} train / {len(splits["val"])} val / {len(splits["test"])} test); give each document\'s "queries"'
        )
    return RetrievalData(documents, splits["train"], splits["val"], splits["test"])
