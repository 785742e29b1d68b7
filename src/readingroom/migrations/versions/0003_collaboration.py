"""collaboration: reports, critical results, consults, peer review, comments, annotations, conferences, referrals

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 15:25:00
"""
from alembic import op
import sqlalchemy as sa
import readingroom.db


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Each area keeps its own block, in this order; tables of one area may reference earlier ones.
    # --- reports ---
    # --- critical results ---
    # --- comments ---
    # --- consults and peer review ---
    # --- annotations ---
    # --- conferences ---
    # --- referrals ---
    pass


def downgrade() -> None:
    # Reverse order of upgrade().
    # --- referrals ---
    # --- conferences ---
    # --- annotations ---
    # --- consults and peer review ---
    # --- comments ---
    # --- critical results ---
    # --- reports ---
    pass
