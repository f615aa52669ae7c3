"""A made-up staff handbook: a fixed context for the attention tests (plain data, no fixtures)."""

from __future__ import annotations

# A made-up staff handbook (about 700 tokens): facts a question can be about, spread over the text.
SECTIONS = [
    ("Working hours", "The office of Larkspur Instruments opens at 7:30 and closes at 18:00. Core hours run from "
     "10:00 to 15:00; outside them staff choose their own schedule, logged in the Tally system."),
    ("Holidays", "Every employee receives 27 days of paid leave per year, plus the public holidays of the canton. "
     "Unused days expire on the 31st of March of the following year."),
    ("Equipment", "Laptops are replaced every four years. A broken screen is repaired by the service desk on the "
     "second floor, which is open on weekdays from 8:00 to 17:00."),
    ("Travel", "Train travel is booked in second class for trips under three hours and in first class otherwise. "
     "Flights need the approval of a department head and are booked through the agency Meridian."),
    ("Expenses", "Expenses are filed within 60 days with receipts attached. Meals on business trips are refunded up "
     "to 45 francs per day; alcohol is never refunded."),
    ("Security", "Badges must be worn visibly inside the building. A lost badge is reported to the front desk, which "
     "issues a temporary badge valid for five days."),
    ("Parking", "The garage under building B has 140 places, allocated by lottery every January. Bicycles park for "
     "free in the courtyard, where two charging stations for electric bikes are available."),
    ("Canteen", "The canteen serves lunch from 11:30 to 14:00. The vegetarian menu of the day costs 9 francs and the "
     "regular menu 12 francs; coffee is free before 9:00."),
    ("Training", "Each employee may spend up to 5 days per year on training courses approved by their manager. The "
     "company covers the course fees up to 3000 francs."),
    ("Health", "The company doctor, Dr. Amsel, holds consultations on Tuesdays and Thursdays in room 0.14. Flu "
     "vaccinations are offered every October."),
]
HANDBOOK = "\n\n".join(f"Section {i}. {title}\n{text}" for i, (title, text) in enumerate(SECTIONS, start=1))
QUESTION = "How many days of paid leave does an employee receive per year?"
