"""The list pages' one way of filtering, paging and answering htmx."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, QueryDict


@dataclass
class Listing:
    page: Page
    form: forms.Form
    query: str  # the filters that are set, for pagination links

    def context(self, **extra: Any) -> dict[str, Any]:
        return {"page": self.page, "form": self.form, "query": self.query, **extra}


def query_of(request: HttpRequest) -> str:
    """The request's filters that are set, without the page number."""
    query = QueryDict(mutable=True)
    for key, value in request.GET.items():
        if value and key != "page":
            query[key] = value
    return query.urlencode()


def filtered(queryset: QuerySet, form: forms.Form, lookups: Mapping[str, str]) -> QuerySet:
    """`queryset` narrowed by each valid field of the bound `form` that has a value: field name
    -> the lookup it filters (e.g. "target": "target_label__icontains")."""
    if not form.is_bound or not form.is_valid():
        return queryset
    for name, lookup in lookups.items():
        value = form.cleaned_data.get(name)
        if value not in (None, ""):
            queryset = queryset.filter(**{lookup: value})
    return queryset


def listing(
    request: HttpRequest, queryset: QuerySet, form: forms.Form, lookups: Mapping[str, str]
) -> Listing:
    page = Paginator(filtered(queryset, form, lookups), settings.OPSPORTAL_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return Listing(page=page, form=form, query=query_of(request))
