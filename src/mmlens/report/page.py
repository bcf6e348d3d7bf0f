"""What every mmlens HTML page shares: the document head and the base style.

Example:
    >>> "<style>" in PAGE_HEAD
    True
"""

# Jinja source, prepended to each page template so that each page stays one
# self-contained string.
PAGE_HEAD = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
  body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; background: #f6f7f9;
         margin: 0; padding: 24px; }
  main { max-width: 1100px; margin: auto; }
  h1 { font-size: 20px; margin: 0 0 12px; }
"""
