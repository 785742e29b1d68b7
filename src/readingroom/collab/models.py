"""Every collaboration table, one module per area (imported here so ``Base.metadata`` knows them)."""

# Each area adds one import line here for its `<area>_models.py` module.
from readingroom.collab import annotations_models as annotations_models
from readingroom.collab import comments_models as comments_models
from readingroom.collab import conferences_models as conferences_models
from readingroom.collab import consults_models as consults_models
from readingroom.collab import critical_models as critical_models
from readingroom.collab import peer_review_models as peer_review_models
from readingroom.collab import referrals_models as referrals_models
from readingroom.collab import reports_models as reports_models
