"""From run records to claims: tables, statistics, RQ1, claims, figures, the report page, a scale's
study, and the crosscheck of the committed results."""
