"""A marketplace on top of the console's seeded world (``conftest.py``), for the market page tests.

``seed_market(database, world)`` adds a third organisation ``initech`` (whose trace six of the
listed rows came from), and in acme's books a dataset ``acme-market`` of 20 CC-BY-4.0 chat rows:
10 from acme's own traces, 6 from initech's trace and 4 labelled by the expert ``exp-ada``. acme
lists and publishes it as "Arithmetic tutoring chats" with a commercial licence offer of 10.00 USD,
and lists its ``acme-sft`` dataset with the stored-XSS probe as title and description (with an
offer). globex -- the buyer -- gets 50.00 USD of prepaid balance through the deposit path.

Buying the 10.00 USD offer pays 1.00 to the platform (10 %) and 9.00 to the contributors pro rata
to their rows: acme 4.50, initech 2.70, the expert 1.80 (``EXPECTED``), each into its pending
royalty account (the expert's and acme's in acme's books, initech's in its own).
"""

from __future__ import annotations

from dataclasses import dataclass

from teachloop.core.money import Money
from teachloop.ledger import Ledger
from teachloop.market import listings, offers, orders
from teachloop.market.royalties import account_name
from teachloop.store import Database, Tenancy
from teachloop.store.repos.datasets import Datasets, NewRow
from tests.web.conftest import XSS, World, add_trace

PRICE = 1000
DEPOSIT = 5000
EXPERT = "exp-ada"
FIRST_ROW = "What is 12 times 7?"


@dataclass(frozen=True)
class Market:
    initech: str
    listing: str
    offer: str
    xss_listing: str
    xss_offer: str
    dataset: str

    def expected(self, acme: str) -> dict[tuple[str, str], int]:
        """(books org, royalty account name) -> what one purchase pays into it."""
        return {(acme, account_name(f"org:{acme}", "pending", "USD")): 450,
                (self.initech, account_name(f"org:{self.initech}", "pending", "USD")): 270,
                (acme, account_name(f"expert:{EXPERT}", "pending", "USD")): 180}


def _chat(question: str, answer: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def seed_market(database: Database, world: World) -> Market:
    """Seed the marketplace described in the module docstring."""
    acme = world.acme.id
    with database.session() as s:
        initech = Tenancy(s).create_org("initech")
        theirs = add_trace(s, initech.id, model="tutor", content="What is 6 times 7?", reply="42")
        rows = [NewRow(content=_chat(FIRST_ROW if i == 0 else f"What is {i} plus {i}?", f"{2 * i}."), split="train",
                       source_kind="feedback", source_trace_id=world.acme.trace_ids[i % 2], license="CC-BY-4.0")
                for i in range(10)]
        rows += [NewRow(content=_chat(f"Initech question {i}?", "Yes."), split="train", source_kind="feedback",
                        source_trace_id=theirs, license="CC-BY-4.0") for i in range(6)]
        rows += [NewRow(content=_chat(f"Expert question {i}?", "Exactly."), split="holdout", source_kind="expert",
                        expert_id=EXPERT, score=1.0, license="CC-BY-4.0") for i in range(4)]
        dataset, _ = Datasets(s).create(acme, name="acme-market", kind="chat", rows=rows, blob_key="datasets/market")
        lst = listings.create_listing(s, acme, kind="dataset", ref="acme-market@1", title="Arithmetic tutoring chats",
                                      description="Twenty graded arithmetic tutoring conversations.")
        listings.publish_listing(s, acme, lst.id)
        offer = offers.create_offer(s, acme, lst.id, pricing="licence", amount=PRICE, currency="USD",
                                    use="commercial")
        xss = listings.create_listing(s, acme, kind="dataset", ref="acme-sft@1", title=XSS, description=XSS)
        listings.publish_listing(s, acme, xss.id)
        xss_offer = offers.create_offer(s, acme, xss.id, pricing="licence", amount=300, currency="USD",
                                        use="research")
        market = Market(initech.id, lst.id, offer.id, xss.id, xss_offer.id, dataset.id)
    assert orders.deposit(database, orders.TestCharges(), world.globex.id, "console-dep",
                          Money(amount=DEPOSIT, currency="USD"), "card_ok") == "paid"
    return market


def royalty_balances(database: Database, market: Market, acme: str) -> dict[tuple[str, str], int]:
    """What each contributor's pending account holds now (0 when not opened yet)."""
    out = {}
    with database.session(write=False) as s:
        ledger = Ledger(s)
        for org, name in market.expected(acme):
            held = {a.name: a.held for a in ledger.accounts.list(org)}
            out[(org, name)] = held.get(name, 0)
    return out
