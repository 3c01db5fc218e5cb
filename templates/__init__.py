"""Jinja templates of the generated app, shipped inside the ersilia_pack wheel."""
