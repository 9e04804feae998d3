"""The task wording that the applications reuse, in one place.

The shipped multi-task adapter learnt these tasks in exactly these words, so the tasks render
their training and evaluation examples with them (``polytask.tasks``) and the applications prompt
the adapter with them (``polytask.apps``); a changed byte is a prompt the adapter never saw.
A leaf: it imports nothing, so an application takes the wording without loading the task registry.
"""

# SQuAD extractive QA (tasks.qa.Squad; apps.ask when the adapter reads).
SQUAD_USER = (
    "Answer the question with a short phrase copied from the passage.\n\nPassage: {context}\n\nQuestion: {question}"
)
NO_ANSWER = "not in the documents"  # the target when the context does not hold the answer

# Enron e-mail intent, Yes/No (tasks.classify.EmailIntent; apps.reply's request finder).
EMAIL_INTENT_USER = (
    "Email sentence: {text}\nIs this a request that needs an answer from the recipient? Answer Yes or No."
)

# SAMSum chat summaries (tasks.summarize.Samsum; apps.summarize for a chat transcript).
SAMSUM_USER = "Summarize this chat in one or two sentences.\n\n{text}"
SAMSUM_MAX_NEW_TOKENS = 64
