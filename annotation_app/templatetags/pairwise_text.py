"""Rendering model text: Markdown, as chat interfaces show it, with raw HTML escaped."""

from django import template
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

register = template.Library()

# "html": False escapes any HTML in the text, and markdown-it refuses javascript:, vbscript:
# and data: links, so model output cannot inject markup or script into the page.
_markdown = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


@register.filter(name="markdown")
def render_markdown(text: str) -> SafeString:
    return mark_safe(_markdown.render(text or ""))  # noqa: S308 - escaped by the renderer
