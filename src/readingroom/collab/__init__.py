"""Collaboration on a case: reports, critical results, consults and peer review, comments,
image annotations, conferences, referrals and the live-update stream that ties them together."""
