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
    op.create_table('reports',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('template_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('sections', sa.JSON(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('updated_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.Column('final_version', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_reports_case_id_cases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports')),
    sa.UniqueConstraint('case_id', name=op.f('uq_reports_case_id'))
    )
    op.create_table('report_versions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('report_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('template_id', sa.String(length=64), nullable=False),
    sa.Column('sections', sa.JSON(), nullable=False),
    sa.Column('addendum', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=128), nullable=False),
    sa.Column('author_id', sa.Integer(), nullable=True),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('signed_by', sa.String(length=128), nullable=False),
    sa.Column('signer_name', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['author_id'], ['users.id'], name=op.f('fk_report_versions_author_id_users')),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], name=op.f('fk_report_versions_report_id_reports'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_versions')),
    sa.UniqueConstraint('report_id', 'number', name='uq_report_versions_report_number')
    )
    with op.batch_alter_table('report_versions', schema=None) as batch_op:
        batch_op.create_index('ix_report_versions_report_kind', ['report_id', 'kind'], unique=False)
    # --- critical results ---
    op.create_table('critical_delegations',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('delegate_id', sa.Integer(), nullable=False),
    sa.Column('valid_from', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('valid_until', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['delegate_id'], ['users.id'], name=op.f('fk_critical_delegations_delegate_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_critical_delegations_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_critical_delegations'))
    )
    with op.batch_alter_table('critical_delegations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_critical_delegations_delegate_id'), ['delegate_id'], unique=False)
    op.create_table('critical_results',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('category', sa.String(length=64), nullable=False),
    sa.Column('level', sa.String(length=8), nullable=False),
    sa.Column('finding', sa.Text(), nullable=False),
    sa.Column('flagged_by', sa.Integer(), nullable=True),
    sa.Column('flagged_by_name', sa.String(length=64), nullable=False),
    sa.Column('clinician_name', sa.String(length=128), nullable=False),
    sa.Column('clinician_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('ack_deadline', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('escalation_step', sa.Integer(), nullable=False),
    sa.Column('next_escalation_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('acknowledged_by', sa.Integer(), nullable=True),
    sa.Column('acknowledged_by_name', sa.String(length=64), nullable=False),
    sa.Column('acknowledged_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('ack_note', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['acknowledged_by'], ['users.id'], name=op.f('fk_critical_results_acknowledged_by_users')),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_critical_results_case_id_cases'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['clinician_id'], ['users.id'], name=op.f('fk_critical_results_clinician_id_users')),
    sa.ForeignKeyConstraint(['flagged_by'], ['users.id'], name=op.f('fk_critical_results_flagged_by_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_critical_results'))
    )
    with op.batch_alter_table('critical_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_critical_results_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_critical_results_state_next', ['state', 'next_escalation_at'], unique=False)
    op.create_table('critical_notifications',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('result_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('recipient', sa.String(length=128), nullable=False),
    sa.Column('recipient_id', sa.Integer(), nullable=True),
    sa.Column('at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['recipient_id'], ['users.id'], name=op.f('fk_critical_notifications_recipient_id_users')),
    sa.ForeignKeyConstraint(['result_id'], ['critical_results.id'], name=op.f('fk_critical_notifications_result_id_critical_results'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_critical_notifications'))
    )
    with op.batch_alter_table('critical_notifications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_critical_notifications_result_id'), ['result_id'], unique=False)
    # --- comments ---
    op.create_table('case_comments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('author_id', sa.Integer(), nullable=True),
    sa.Column('author_name', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('mentions', sa.JSON(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('edited_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('deleted_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('deleted_by', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['author_id'], ['users.id'], name=op.f('fk_case_comments_author_id_users')),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_case_comments_case_id_cases'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['parent_id'], ['case_comments.id'], name=op.f('fk_case_comments_parent_id_case_comments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_comments'))
    )
    with op.batch_alter_table('case_comments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_comments_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_case_comments_parent_id'), ['parent_id'], unique=False)
    op.create_table('case_comment_revisions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('comment_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('author_name', sa.String(length=64), nullable=False),
    sa.Column('at', readingroom.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['comment_id'], ['case_comments.id'], name=op.f('fk_case_comment_revisions_comment_id_case_comments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_comment_revisions')),
    sa.UniqueConstraint('comment_id', 'revision', name='uq_case_comment_revisions_rev')
    )
    with op.batch_alter_table('case_comment_revisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_comment_revisions_comment_id'), ['comment_id'], unique=False)
    # --- consults and peer review ---
    # Child reads (consults, second opinions, second reads, peer reviews) are cases with a kind and a parent.
    with op.batch_alter_table('cases') as batch_op:  # SQLite adds a foreign key only by copying the table
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='read', nullable=False))
        batch_op.add_column(sa.Column('parent_case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                                      nullable=True))
        batch_op.add_column(sa.Column('routing_request', sa.JSON(), server_default='{}', nullable=False))
        batch_op.create_foreign_key('fk_cases_parent_case_id', 'cases', ['parent_case_id'], ['id'],
                                    ondelete='CASCADE')
        batch_op.create_index('ix_cases_parent_case_id', ['parent_case_id'], unique=False)
    op.create_table('consults',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('parent_case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('child_case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('dedupe_key', sa.String(length=64), nullable=True),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('subspecialty', sa.String(length=64), nullable=False),
    sa.Column('expert_user_id', sa.Integer(), nullable=True),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.String(length=128), nullable=False),
    sa.Column('requested_by_id', sa.Integer(), nullable=True),
    sa.Column('requested_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('agrees', sa.Boolean(), nullable=True),
    sa.Column('answered_by', sa.String(length=128), nullable=False),
    sa.Column('answered_by_id', sa.Integer(), nullable=True),
    sa.Column('answered_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('report_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('grant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['answered_by_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['child_case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['expert_user_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['parent_case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['requested_by_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('child_case_id'),
    sa.UniqueConstraint('dedupe_key')
    )
    op.create_index('ix_consults_parent_case', 'consults', ['parent_case_id', 'id'], unique=False)
    op.create_index('ix_consults_state', 'consults', ['state'], unique=False)
    op.create_table('peer_reviews',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('child_case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('reviewed_user_id', sa.Integer(), nullable=True),
    sa.Column('reviewer_user_id', sa.Integer(), nullable=True),
    sa.Column('final_event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('score', sa.String(length=4), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('scored_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('grant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['child_case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reviewed_user_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['reviewer_user_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('case_id'),
    sa.UniqueConstraint('child_case_id')
    )
    op.create_index('ix_peer_reviews_reviewed_state', 'peer_reviews', ['reviewed_user_id', 'state'], unique=False)
    op.create_index('ix_peer_reviews_site_id', 'peer_reviews', ['site_id'], unique=False)
    # --- annotations ---
    op.create_table('annotations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('frame', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('points', sa.JSON(), nullable=False),
    sa.Column('label', sa.Text(), nullable=False),
    sa.Column('measurements', sa.JSON(), nullable=False),
    sa.Column('author_id', sa.Integer(), nullable=True),
    sa.Column('author', sa.String(length=128), nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('deleted_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['author_id'], ['users.id'], name=op.f('fk_annotations_author_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_annotations_case_id_cases'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotations'))
    )
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotations_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_annotations_sop_frame', ['sop_uid', 'frame'], unique=False)
        batch_op.create_index('ix_annotations_study', ['study_uid'], unique=False)
    op.create_table('annotation_versions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('annotation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('points', sa.JSON(), nullable=False),
    sa.Column('label', sa.Text(), nullable=False),
    sa.Column('measurements', sa.JSON(), nullable=False),
    sa.Column('by', sa.String(length=128), nullable=False),
    sa.Column('at', readingroom.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['annotation_id'], ['annotations.id'], name=op.f('fk_annotation_versions_annotation_id_annotations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_versions')),
    sa.UniqueConstraint('annotation_id', 'version', name='uq_annotation_versions')
    )
    # --- conferences ---
    op.create_table('conferences',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('scheduled_start', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('scheduled_end', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('chair_id', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['chair_id'], ['users.id'], name=op.f('fk_conferences_chair_id_users')),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_conferences_created_by_users')),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_conferences_site_id_sites')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conferences'))
    )
    with op.batch_alter_table('conferences', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conferences_scheduled_start'), ['scheduled_start'], unique=False)
        batch_op.create_index(batch_op.f('ix_conferences_site_id'), ['site_id'], unique=False)
    op.create_table('conference_cases',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('conference_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('added_by', sa.String(length=128), nullable=False),
    sa.Column('added_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('presented_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('decision_outcome', sa.String(length=32), nullable=False),
    sa.Column('decision_text', sa.Text(), nullable=False),
    sa.Column('decided_by', sa.String(length=128), nullable=False),
    sa.Column('decided_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_conference_cases_case_id_cases'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['conference_id'], ['conferences.id'], name=op.f('fk_conference_cases_conference_id_conferences'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conference_cases')),
    sa.UniqueConstraint('conference_id', 'case_id', name='uq_conference_cases_conf_case')
    )
    with op.batch_alter_table('conference_cases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conference_cases_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_conference_cases_conference_id'), ['conference_id'], unique=False)
    op.create_table('conference_attendees',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('conference_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('external', sa.Boolean(), nullable=False),
    sa.Column('added_by', sa.String(length=128), nullable=False),
    sa.Column('added_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('checked_in_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['conference_id'], ['conferences.id'], name=op.f('fk_conference_attendees_conference_id_conferences'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_conference_attendees_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conference_attendees')),
    sa.UniqueConstraint('conference_id', 'user_id', name='uq_conference_attendees_conf_user')
    )
    with op.batch_alter_table('conference_attendees', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conference_attendees_conference_id'), ['conference_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_conference_attendees_user_id'), ['user_id'], unique=False)
    # --- referrals ---
    op.create_table('referrals',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=False),
    sa.Column('submitted_by', sa.Integer(), nullable=False),
    sa.Column('receiving_site_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=128), nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=False),
    sa.Column('sex', sa.String(length=1), nullable=False),
    sa.Column('clinical_question', sa.Text(), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('requested_procedure', sa.String(length=128), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('body_part', sa.String(length=64), nullable=False),
    sa.Column('images', sa.String(length=16), nullable=False),
    sa.Column('referring_physician', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('sla_due_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('sla_breached_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('exception_item_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('decided_by', sa.String(length=128), nullable=False),
    sa.Column('decided_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('decline_reason', sa.Text(), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_referrals_case_id_cases')),
    sa.ForeignKeyConstraint(['receiving_site_id'], ['sites.id'], name=op.f('fk_referrals_receiving_site_id_sites')),
    sa.ForeignKeyConstraint(['submitted_by'], ['users.id'], name=op.f('fk_referrals_submitted_by_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_referrals')),
    sa.UniqueConstraint('accession_number', name=op.f('uq_referrals_accession_number'))
    )
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_referrals_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_referrals_receiving_site_id'), ['receiving_site_id'], unique=False)
        batch_op.create_index('ix_referrals_state_sla', ['state', 'sla_due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_referrals_submitted_by'), ['submitted_by'], unique=False)
    op.create_table('referral_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('referral_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['referral_id'], ['referrals.id'], name=op.f('fk_referral_events_referral_id_referrals'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_referral_events'))
    )
    with op.batch_alter_table('referral_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_referral_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_referral_events_referral_id'), ['referral_id'], unique=False)
    pass


def downgrade() -> None:
    # Reverse order of upgrade().
    # --- referrals ---
    with op.batch_alter_table('referral_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_referral_events_referral_id'))
        batch_op.drop_index(batch_op.f('ix_referral_events_at'))
    op.drop_table('referral_events')
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_referrals_submitted_by'))
        batch_op.drop_index('ix_referrals_state_sla')
        batch_op.drop_index(batch_op.f('ix_referrals_receiving_site_id'))
        batch_op.drop_index(batch_op.f('ix_referrals_case_id'))
    op.drop_table('referrals')
    # --- conferences ---
    with op.batch_alter_table('conference_attendees', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conference_attendees_user_id'))
        batch_op.drop_index(batch_op.f('ix_conference_attendees_conference_id'))
    op.drop_table('conference_attendees')
    with op.batch_alter_table('conference_cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conference_cases_conference_id'))
        batch_op.drop_index(batch_op.f('ix_conference_cases_case_id'))
    op.drop_table('conference_cases')
    with op.batch_alter_table('conferences', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conferences_site_id'))
        batch_op.drop_index(batch_op.f('ix_conferences_scheduled_start'))
    op.drop_table('conferences')
    # --- annotations ---
    op.drop_table('annotation_versions')
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.drop_index('ix_annotations_study')
        batch_op.drop_index('ix_annotations_sop_frame')
        batch_op.drop_index(batch_op.f('ix_annotations_case_id'))
    op.drop_table('annotations')
    # --- consults and peer review ---
    op.drop_index('ix_peer_reviews_site_id', table_name='peer_reviews')
    op.drop_index('ix_peer_reviews_reviewed_state', table_name='peer_reviews')
    op.drop_table('peer_reviews')
    op.drop_index('ix_consults_state', table_name='consults')
    op.drop_index('ix_consults_parent_case', table_name='consults')
    op.drop_table('consults')
    with op.batch_alter_table('cases') as batch_op:  # SQLite cannot drop a column with a foreign key in place
        batch_op.drop_index('ix_cases_parent_case_id')
        batch_op.drop_constraint('fk_cases_parent_case_id', type_='foreignkey')
        batch_op.drop_column('routing_request')
        batch_op.drop_column('parent_case_id')
        batch_op.drop_column('kind')
    # --- comments ---
    with op.batch_alter_table('case_comment_revisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_comment_revisions_comment_id'))
    op.drop_table('case_comment_revisions')
    with op.batch_alter_table('case_comments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_comments_parent_id'))
        batch_op.drop_index(batch_op.f('ix_case_comments_case_id'))
    op.drop_table('case_comments')
    # --- critical results ---
    with op.batch_alter_table('critical_notifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_critical_notifications_result_id'))
    op.drop_table('critical_notifications')
    with op.batch_alter_table('critical_results', schema=None) as batch_op:
        batch_op.drop_index('ix_critical_results_state_next')
        batch_op.drop_index(batch_op.f('ix_critical_results_case_id'))
    op.drop_table('critical_results')
    with op.batch_alter_table('critical_delegations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_critical_delegations_delegate_id'))
    op.drop_table('critical_delegations')
    # --- reports ---
    with op.batch_alter_table('report_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_report_versions_report_kind')
    op.drop_table('report_versions')
    op.drop_table('reports')
    pass
