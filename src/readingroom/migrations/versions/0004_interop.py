"""interop (orders, HL7 message log, destinations, outbox, forwarding, procedures, patient identity, go-live); analytics index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 18:00:32.070644
"""
from alembic import op
import sqlalchemy as sa
import readingroom.db


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Generated from interop/models.py (and the new columns on cases, patients and studies), then reviewed.
    op.create_table('hl7_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('control_id', sa.String(length=64), nullable=False),
    sa.Column('message_type', sa.String(length=32), nullable=False),
    sa.Column('sending_application', sa.String(length=128), nullable=False),
    sa.Column('sending_facility', sa.String(length=128), nullable=False),
    sa.Column('peer_address', sa.String(length=128), nullable=False),
    sa.Column('received_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hl7_messages'))
    )
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hl7_messages_received_at'), ['received_at'], unique=False)
        batch_op.create_index('ix_hl7_messages_sender_control', ['sending_application', 'sending_facility', 'control_id'], unique=False)

    op.create_table('procedures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('body_part', sa.String(length=64), nullable=False),
    sa.Column('radlex_code', sa.String(length=32), nullable=False),
    sa.Column('loinc_code', sa.String(length=32), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_procedures')),
    sa.UniqueConstraint('code', name=op.f('uq_procedures_code'))
    )
    op.create_table('patient_links',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('patient_pk', sa.Integer(), nullable=False),
    sa.Column('other_pk', sa.Integer(), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('decided_by', sa.String(length=128), nullable=False),
    sa.Column('decided_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['other_pk'], ['patients.id'], name=op.f('fk_patient_links_other_pk_patients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.id'], name=op.f('fk_patient_links_patient_pk_patients'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_links')),
    sa.UniqueConstraint('patient_pk', 'other_pk', name='uq_patient_links_pair')
    )
    with op.batch_alter_table('patient_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patient_links_other_pk'), ['other_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_links_patient_pk'), ['patient_pk'], unique=False)

    op.create_table('patient_merges',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('surviving_pk', sa.Integer(), nullable=False),
    sa.Column('merged_pk', sa.Integer(), nullable=False),
    sa.Column('merged_patient_id', sa.String(length=64), nullable=False),
    sa.Column('merged_issuer', sa.String(length=64), nullable=False),
    sa.Column('moved', sa.JSON(), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('at', readingroom.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['merged_pk'], ['patients.id'], name=op.f('fk_patient_merges_merged_pk_patients')),
    sa.ForeignKeyConstraint(['surviving_pk'], ['patients.id'], name=op.f('fk_patient_merges_surviving_pk_patients')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_merges'))
    )
    with op.batch_alter_table('patient_merges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patient_merges_merged_pk'), ['merged_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_merges_surviving_pk'), ['surviving_pk'], unique=False)

    op.create_table('procedure_mappings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('value', sa.String(length=255), nullable=False),
    sa.Column('procedure_id', sa.Integer(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['procedure_id'], ['procedures.id'], name=op.f('fk_procedure_mappings_procedure_id_procedures'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_procedure_mappings')),
    sa.UniqueConstraint('scope', 'source', 'value', name='uq_procedure_mappings_scope_source_value')
    )
    with op.batch_alter_table('procedure_mappings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_procedure_mappings_procedure_id'), ['procedure_id'], unique=False)

    op.create_table('interop_destinations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=True),
    sa.Column('url', sa.String(length=1024), nullable=False),
    sa.Column('peer_id', sa.Integer(), nullable=True),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('events', sa.JSON(), nullable=False),
    sa.Column('prior_source', sa.Boolean(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('last_contact_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('last_success_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('last_error_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('down_since', readingroom.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['peer_id'], ['dicom_peers.id'], name=op.f('fk_interop_destinations_peer_id_dicom_peers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_interop_destinations_site_id_sites')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_interop_destinations')),
    sa.UniqueConstraint('name', name=op.f('uq_interop_destinations_name'))
    )
    op.create_table('peer_validations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('peer_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('steps', sa.JSON(), nullable=False),
    sa.Column('started_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('finished_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('started_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['peer_id'], ['dicom_peers.id'], name=op.f('fk_peer_validations_peer_id_dicom_peers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_peer_validations'))
    )
    with op.batch_alter_table('peer_validations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_peer_validations_peer_id'), ['peer_id'], unique=False)

    op.create_table('forwarding_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('match', sa.JSON(), nullable=False),
    sa.Column('destination_id', sa.Integer(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['destination_id'], ['interop_destinations.id'], name=op.f('fk_forwarding_rules_destination_id_interop_destinations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_forwarding_rules')),
    sa.UniqueConstraint('name', name=op.f('uq_forwarding_rules_name'))
    )
    op.create_table('orders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('placer_order_number', sa.String(length=64), nullable=False),
    sa.Column('placer_authority', sa.String(length=64), nullable=False),
    sa.Column('filler_order_number', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('patient_pk', sa.Integer(), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_issuer', sa.String(length=64), nullable=False),
    sa.Column('procedure_code', sa.String(length=64), nullable=False),
    sa.Column('procedure_text', sa.String(length=255), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('body_part', sa.String(length=64), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('patient_class', sa.String(length=16), nullable=False),
    sa.Column('ordering_provider', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('study_pk', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('source_message_id', sa.String(length=64), nullable=False),
    sa.Column('requested_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('attrs', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_orders_case_id_cases'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.id'], name=op.f('fk_orders_patient_pk_patients')),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_orders_site_id_sites')),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.id'], name=op.f('fk_orders_study_pk_studies'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_orders_patient_status', ['patient_pk', 'status'], unique=False)
        batch_op.create_index('ix_orders_placer', ['placer_order_number', 'placer_authority'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_site_id'), ['site_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_study_pk'), ['study_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_updated_at'), ['updated_at'], unique=False)

    op.create_table('outbox_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('destination_id', sa.Integer(), nullable=False),
    sa.Column('operation', sa.String(length=16), nullable=False),
    sa.Column('dedupe_key', sa.String(length=128), nullable=False),
    sa.Column('control_id', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('leased_until', readingroom.db.UTCDateTime(), nullable=True),
    sa.Column('leased_by', sa.String(length=64), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.Column('created_at', readingroom.db.UTCDateTime(), nullable=False),
    sa.Column('delivered_at', readingroom.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_outbox_items_case_id_cases'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['destination_id'], ['interop_destinations.id'], name=op.f('fk_outbox_items_destination_id_interop_destinations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_items')),
    sa.UniqueConstraint('destination_id', 'dedupe_key', name='uq_outbox_items_destination_dedupe')
    )
    with op.batch_alter_table('outbox_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_items_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_outbox_items_destination_state_id', ['destination_id', 'state', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_items_study_uid'), ['study_uid'], unique=False)

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('procedure_code', sa.String(length=64), server_default='', nullable=False))
        batch_op.create_index(batch_op.f('ix_cases_procedure_code'), ['procedure_code'], unique=False)

    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('merged_into_pk', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_patients_merged_into_pk_patients'), 'patients', ['merged_into_pk'], ['id'])
        batch_op.create_index(batch_op.f('ix_patients_birth_date'), ['birth_date'], unique=False)  # identity matching

    with op.batch_alter_table('studies', schema=None) as batch_op:  # '' or 'prior:<destination>'
        batch_op.add_column(sa.Column('origin', sa.String(length=64), server_default='', nullable=False))

    with op.batch_alter_table('case_events', schema=None) as batch_op:  # turnaround analytics (issue 7)
        batch_op.create_index('ix_case_events_case_kind_at', ['case_id', 'kind', 'at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('case_events', schema=None) as batch_op:
        batch_op.drop_index('ix_case_events_case_kind_at')

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('origin')

    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patients_birth_date'))
        batch_op.drop_constraint(batch_op.f('fk_patients_merged_into_pk_patients'), type_='foreignkey')
        batch_op.drop_column('merged_into_pk')

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cases_procedure_code'))
        batch_op.drop_column('procedure_code')

    with op.batch_alter_table('outbox_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_items_study_uid'))
        batch_op.drop_index('ix_outbox_items_destination_state_id')
        batch_op.drop_index(batch_op.f('ix_outbox_items_case_id'))

    op.drop_table('outbox_items')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orders_updated_at'))
        batch_op.drop_index(batch_op.f('ix_orders_study_pk'))
        batch_op.drop_index(batch_op.f('ix_orders_status'))
        batch_op.drop_index(batch_op.f('ix_orders_site_id'))
        batch_op.drop_index('ix_orders_placer')
        batch_op.drop_index('ix_orders_patient_status')
        batch_op.drop_index(batch_op.f('ix_orders_case_id'))
        batch_op.drop_index(batch_op.f('ix_orders_accession_number'))

    op.drop_table('orders')
    op.drop_table('forwarding_rules')
    with op.batch_alter_table('peer_validations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_peer_validations_peer_id'))

    op.drop_table('peer_validations')
    op.drop_table('interop_destinations')
    with op.batch_alter_table('procedure_mappings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_procedure_mappings_procedure_id'))

    op.drop_table('procedure_mappings')
    with op.batch_alter_table('patient_merges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_merges_surviving_pk'))
        batch_op.drop_index(batch_op.f('ix_patient_merges_merged_pk'))

    op.drop_table('patient_merges')
    with op.batch_alter_table('patient_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_links_patient_pk'))
        batch_op.drop_index(batch_op.f('ix_patient_links_other_pk'))

    op.drop_table('patient_links')
    op.drop_table('procedures')
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_hl7_messages_sender_control')
        batch_op.drop_index(batch_op.f('ix_hl7_messages_received_at'))

    op.drop_table('hl7_messages')
