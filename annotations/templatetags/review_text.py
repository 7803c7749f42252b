"""``{{ text|safe_markdown }}``: untrusted LLM text rendered as Markdown, never as HTML.

markdown-it-py (CommonMark) runs with raw HTML off, so tags in the text are
escaped, and with its default link validation (no ``javascript:`` URLs);
nh3 (ammonia) then keeps only an allow-list of tags and attributes, as a
second line of defence.
"""

import nh3
from django import template
from django.utils.safestring import mark_safe
from markdown_it import MarkdownIt

register = template.Library()

_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_TAGS = {
    "p",
    "br",
    "hr",
    "em",
    "strong",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}


@register.filter
def safe_markdown(text: str) -> str:
    html = _MARKDOWN.render(text or "")
    return mark_safe(nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, link_rel="noopener noreferrer nofollow"))
