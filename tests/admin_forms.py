"""Admin change forms as a browser posts them back, for tests that edit through the admin."""

from __future__ import annotations


def admin_post_data(page) -> dict:
    """The change form on an admin page, as the browser would post it back."""
    forms = [page.context["adminform"].form]
    data = {}
    for inline in page.context["inline_admin_formsets"]:
        forms += [inline.formset.management_form, *inline.formset.forms]
    for form in forms:
        for field in form:
            value = field.value()
            widgets = getattr(field.field.widget, "widgets", None)
            if widgets:  # several inputs: a split date and time, the sampling plan table
                for index, part in enumerate(field.field.widget.decompress(value)):
                    data[f"{field.html_name}_{index}"] = "" if part is None else part
            elif isinstance(value, bool):
                if value:
                    data[field.html_name] = "on"
            elif value is not None:
                data[field.html_name] = field.field.prepare_value(value)
    return data
