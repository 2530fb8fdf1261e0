"""PII scrubbing: scrubadub with stricter detectors for emails, cards, secrets and URLs.

``scrub_text(text)`` replaces personal data and credentials with placeholders
in two passes:

1. teachloop's detectors (scrubadub ``Detector`` subclasses, run by a
   scrubadub ``Scrubber``):

   * ``{{EMAIL}}`` -- ``local@domain.tld`` only. scrubadub's own detector also
     reads "me at john.doe@example.com" as an address ("me@john.doe") and
     mangles the sentence, so it is not used;
   * ``{{CREDIT_CARD}}`` -- 13 to 19 digits, optionally grouped by single
     spaces or dashes (``4111-1111-1111-1111``, ``4111 1111 1111 1111``),
     that pass the Luhn check (so order numbers and phone numbers stay);
   * ``{{PASSWORD}}`` / ``{{SECRET}}`` -- the value after ``password``,
     ``passwd``, ``pwd``, ``passphrase`` (``{{PASSWORD}}``) or ``secret``,
     ``token``, ``api_key``, ``access_key``, ``client_secret``,
     ``private_key``, ... (``{{SECRET}}``, values of 8 characters or more)
     followed by ``:``, ``=`` or ``is`` -- also with a prefix joined by
     ``_`` or ``-`` (``aws_secret_access_key``, ``GITHUB_TOKEN``,
     ``db_password``) -- the key word stays, the value goes; and tokens of
     known shapes anywhere (``sk-...``, AWS ``AKIA...``/``ASIA...``, Google
     ``AIza...``, ``ghp_...``, ``xox?-...``, ``Bearer ...``);
   * ``{{URL}}`` -- ``http(s)://...`` and ``www....``;
   * ``{{SOCIAL_SECURITY_NUMBER}}`` -- ``NNN-NN-NNNN`` or ``NNN NN NNNN`` in
     the SSA's format, published sample numbers included (scrubadub's own
     detector lets ``078-05-1120`` through);

2. scrubadub's own phone, social security number, twitter handle and
   username/password detectors on what is left.

This module knows nothing of the store; scrubadub loads lazily.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.)+[A-Za-z]{2,24}\b")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
_PASSWORD_KEYS = r"pass(?:word|wd|phrase)?|pwd"
_SECRET_KEYS = (r"secret|token|api[_\- ]?key|apikey|access[_\- ]?(?:key|token)|secret[_\- ]?key|auth[_\- ]?token|"
                r"client[_\- ]?secret|private[_\- ]?key|bearer[_\- ]?token")
KEY_VALUE = re.compile(
    rf"\b(?P<key>(?:[A-Za-z0-9]+[_\-])*(?:{_PASSWORD_KEYS}|{_SECRET_KEYS}))\b\s*(?::|=|\bis\b)\s*[\"']?"
    rf"(?P<value>[^\s\"',;]+)",
    re.IGNORECASE,
)
TOKEN = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{8,}|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{35}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|xox[abprs]-[A-Za-z0-9\-]{10,})"
    r"|(?<=\bBearer )[A-Za-z0-9._\-]{16,}"
)
#: US social security numbers in the SSA's format (area not 000, 666 or 9xx; group not 00; serial not 0000),
#: dashed or spaced -- including published ones (078-05-1120) that scrubadub's own detector lets through
SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)\]]")
MIN_SECRET = 8
SCRUBADUB_DETECTORS = ("phone", "social_security_number", "twitter", "credential")


def luhn_ok(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_numbers(text: str) -> Iterator[tuple[int, int]]:
    """Spans of Luhn-valid card numbers (13-19 digits, single spaces or dashes between groups allowed)."""
    for m in CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
            yield m.start(), m.end()


def secrets_in(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, placeholder type) of credential values and known token shapes."""
    taken: list[tuple[int, int]] = []
    for m in KEY_VALUE.finditer(text):
        kind = "password" if re.search(rf"(?:^|[_\-])(?:{_PASSWORD_KEYS})$", m.group("key"), re.IGNORECASE) \
            else "secret"
        if kind == "secret" and len(m.group("value")) < MIN_SECRET:
            continue  # "token budget: 5" is not a credential
        taken.append((m.start("value"), m.end("value")))
        yield m.start("value"), m.end("value"), kind
    for m in TOKEN.finditer(text):
        if not any(b < m.end() and m.start() < e for b, e in taken):
            yield m.start(), m.end(), "secret"


@functools.cache
def _scrubbers() -> tuple[Any, Any]:
    import scrubadub
    from scrubadub.detectors import Detector
    from scrubadub.filth import CreditCardFilth, EmailFilth, Filth, UrlFilth

    class PasswordFilth(Filth):  # type: ignore[misc]
        type = "password"

    class SecretFilth(Filth):  # type: ignore[misc]
        type = "secret"

    class SSNFilth(Filth):  # type: ignore[misc]  # scrubadub's own class drops published numbers as invalid
        type = "social_security_number"

    class _Spans(Detector):  # type: ignore[misc]
        """A scrubadub detector over a function yielding (start, end, filth class) spans."""

        def __init__(self, name: str, find: Callable[[str], Iterator[tuple[int, int, type]]]) -> None:
            super().__init__(name=name)
            self.find = find

        def iter_filth(self, text: str, document_name: str | None = None) -> Iterator[Any]:
            for beg, end, cls in self.find(text):
                yield cls(beg=beg, end=end, text=text[beg:end], detector_name=self.name,
                          document_name=document_name, locale=self.locale)

    ours = scrubadub.Scrubber(detector_list=[
        _Spans("teachloop_email", lambda t: ((m.start(), m.end(), EmailFilth) for m in EMAIL.finditer(t))),
        _Spans("teachloop_card", lambda t: ((b, e, CreditCardFilth) for b, e in card_numbers(t))),
        _Spans("teachloop_secret", lambda t: ((b, e, PasswordFilth if k == "password" else SecretFilth)
                                              for b, e, k in secrets_in(t))),
        _Spans("teachloop_url", lambda t: ((m.start(), m.end(), UrlFilth) for m in URL.finditer(t))),
        _Spans("teachloop_ssn", lambda t: ((m.start(), m.end(), SSNFilth) for m in SSN.finditer(t))),
    ])
    theirs = scrubadub.Scrubber(detector_list=list(SCRUBADUB_DETECTORS))
    return ours, theirs


def scrub_text(text: str) -> str:
    """``text`` with PII and credentials replaced by placeholders (see the module docstring)."""
    if not text:
        return text
    with warnings.catch_warnings():  # scrubadub 2 warns about its own internal use of deprecated APIs
        warnings.simplefilter("ignore", DeprecationWarning)
        ours, theirs = _scrubbers()
        return str(theirs.clean(str(ours.clean(text))))


__all__ = ["card_numbers", "luhn_ok", "scrub_text", "secrets_in"]
