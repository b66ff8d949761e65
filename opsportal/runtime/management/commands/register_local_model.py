from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.text import slugify

from opsportal.inventory.models import Offering, Provider
from opsportal.runtime.decoding import EngineError
from opsportal.runtime.engine import resolve_model_path

ROUTES = {
    "mistral": ["/v1/chat/completions", "/chat/completions"],
    "llama": ["/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions"],
}
DEFAULTS = {"mistral": (8192, False), "llama": (16, True)}


def _price(value: str) -> Decimal:
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"{value!r} is not a price.") from None
    if price < 0:
        raise CommandError("Prices cannot be negative.")
    return price


class Command(BaseCommand):
    help = "Register a GGUF file as a local offering the runtime can serve."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="GGUF file, or pkg:<distribution>:<file inside it>")
        parser.add_argument("--name", required=True, help="Model name shown in the console.")
        parser.add_argument(
            "--family",
            choices=sorted(ROUTES),
            required=True,
            help="Which API the endpoints speak (defaults, routes, parameters).",
        )
        parser.add_argument("--context-length", type=int, default=4096)
        parser.add_argument("--input-price", default="0", help="Per million input tokens.")
        parser.add_argument("--output-price", default="0", help="Per million output tokens.")
        parser.add_argument("--currency", default="USD")
        parser.add_argument("--slug", help="Catalog id (default: from the name).")

    def handle(self, *args: object, **o: str | int) -> None:
        try:
            resolve_model_path(str(o["path"]))
        except EngineError as exc:
            raise CommandError(str(exc)) from exc
        if int(o["context_length"]) < 256:
            raise CommandError("--context-length must be at least 256.")
        family = str(o["family"])
        max_tokens, ignore_eos = DEFAULTS[family]
        slug = str(o["slug"] or slugify(str(o["name"])))
        _, created = Offering.objects.update_or_create(
            slug=slug,
            defaults={
                "family": "Local",
                "model_name": o["name"],
                "publisher": "Local file",
                "tier": Offering.Tier.OPEN,
                "api_family": family,
                "serverless": True,
                "serverless_regions": ["local"],
                "managed_compute": True,
                "routes": ROUTES[family],
                "default_max_tokens": max_tokens,
                "default_ignore_eos": ignore_eos,
                "context_length": o["context_length"],
                "price_meters": ["paygo-inference-input-tokens", "paygo-inference-output-tokens"],
                "input_price_per_million": _price(str(o["input_price"])),
                "output_price_per_million": _price(str(o["output_price"])),
                "currency": o["currency"],
                "is_preview": False,
                "provider_scope": Provider.LOCAL,
                "local_model_path": o["path"],
            },
        )
        verb = "Registered" if created else "Updated"
        self.stdout.write(self.style.SUCCESS(f"{verb} local offering {slug} ({family} API)."))
