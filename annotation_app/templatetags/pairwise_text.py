"""Rendering model text: Markdown, as chat interfaces show it, with raw HTML escaped.

Images are shown as links, never loaded: an image in a model's (or an imported file's) text
would otherwise make every annotator's browser fetch a URL that the text chose. The Content
Security Policy (``img-src``) refuses remote images as well.
"""

from django import template
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

from annotation_app.services.generation_errors import generation_error_for

register = template.Library()

# "html": False escapes any HTML in the text, and markdown-it refuses javascript:, vbscript:
# and data: links, so model output cannot inject markup or script into the page.
_markdown = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def _image_as_link(self, tokens, idx, options, env) -> str:
    """``![alt](src)`` becomes ``[image: alt]``, a link to ``src`` (plain text inside a link)."""
    image = tokens[idx]
    alt = self.renderInlineAsText(image.children or [], options, env)
    label = escapeHtml(f"[image: {alt}]" if alt else "[image]")
    inside_link = sum(t.nesting for t in tokens[:idx] if t.type in ("link_open", "link_close"))
    if inside_link:
        return f'<span class="md-image">{label}</span>'
    source = escapeHtml(image.attrGet("src") or "")
    return f'<a class="md-image" href="{source}" rel="nofollow noopener noreferrer">{label}</a>'


_markdown.add_render_rule("image", _image_as_link)


@register.filter(name="markdown")
def render_markdown(text: str) -> SafeString:
    return mark_safe(_markdown.render(text or ""))  # noqa: S308 - escaped by the renderer


@register.filter(name="minutes")
def minutes(duration) -> str:
    """A ``timedelta`` in whole minutes, for people: ``1 minute``, ``15 minutes``."""
    count = max(1, round(duration.total_seconds() / 60))
    return f"{count} minute{'' if count == 1 else 's'}"


@register.filter(name="generation_error")
def generation_error(assignment) -> str:
    """Why the assignment's responses could not be generated, as its annotator may see it."""
    return generation_error_for(assignment)
