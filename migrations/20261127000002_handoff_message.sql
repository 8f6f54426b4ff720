-- What the user is told when their conversation is handed to a human agent.
ALTER TABLE client_configs
    ADD COLUMN handoff_message VARCHAR(2000) NOT NULL
        DEFAULT 'I am connecting you with a member of our team. They will reply here shortly.';
